"""``python -m evo_sparse``: the same as the ``evo-sparse`` command."""

from evo_sparse.cli import main

if __name__ == "__main__":
    main(prog_name="evo-sparse")
