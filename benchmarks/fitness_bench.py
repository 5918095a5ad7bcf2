"""Fitness benchmark (issue 3): the same as `evo-sparse bench`; run `python benchmarks/fitness_bench.py --help`."""

from evo_sparse.cli import cli

if __name__ == "__main__":
    cli(["bench", *__import__("sys").argv[1:]])
