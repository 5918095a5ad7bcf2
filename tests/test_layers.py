"""The package's shape: folders are layers, imports point down only, the search knows no torch, only the model
registry's modules name a concrete network, and no module outgrows one sitting (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "evo_sparse"

# Each layer and the layers it may import (itself included); lowest first. The command line (cli/) and __main__
# may import anything.
ALLOWED: dict[str, set[str]] = {
    "foundations": {"foundations"},
    "stats": {"foundations", "stats"},
    "models": {"foundations", "models"},
    "search": {"foundations", "models", "search"},
    "training": {"foundations", "models", "training"},
    "execution": {"foundations", "models", "training", "execution"},
    "runs": {"foundations", "stats", "models", "search", "training", "execution", "runs"},
    "study": {"foundations", "stats", "models", "search", "training", "execution", "runs", "study"},
}
CONCRETE_MODELS = ("evo_sparse.models.wrn", "evo_sparse.models.wrn_batched", "evo_sparse.models.resnet",
                   "evo_sparse.models.vgg")  # fmt: skip
CONCRETE_NAMES = ("WideResNet", "PopulationWRN", "CifarResNet", "CifarVGG")
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(path: Path) -> str | None:
    """The layer folder of a module, None for the top-level ones (the command line, ``cli/``, included)."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 and parts[0] != "cli" else None


def imported(path: Path) -> set[str]:
    """Every ``evo_sparse`` module ``path`` imports, at any depth (function bodies included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("evo_sparse")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evo_sparse"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from evo_sparse.models import wrn`
    return out


def imported_layer(module: str) -> str | None:
    """The layer (or top-level module) ``evo_sparse.<x>...`` belongs to; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_lives_in_a_known_layer():
    for path in modules():
        layer = layer_of(path)
        assert layer is None or layer in ALLOWED, f"{path}: folder {layer!r} is not a layer in ALLOWED"
        if layer is None:
            assert path.name in ("__init__.py", "__main__.py") or path.parent.name == "cli", path


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_only(path):
    layer = layer_of(path)
    if layer is None:
        return
    for module in imported(path):
        target = imported_layer(module)
        if target is None or target.startswith("__"):  # the package itself (its version)
            continue
        assert target in ALLOWED[layer], f"{path.relative_to(PACKAGE)} ({layer}) imports {module} ({target})"


def test_the_import_check_sees_an_import_inside_a_function(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from evo_sparse.study import final\n")
    assert {imported_layer(m) for m in imported(bad)} == {"study"}
    assert "study" not in ALLOWED["training"]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_model_modules_name_a_concrete_network(path):
    if layer_of(path) == "models" and path.stem != "registry":
        return
    source = path.read_text()
    for module in imported(path):
        assert not module.startswith(CONCRETE_MODELS), f"{path.relative_to(PACKAGE)} imports {module}"
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}
    assert not names & set(CONCRETE_NAMES), f"{path.relative_to(PACKAGE)} names {names & set(CONCRETE_NAMES)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_passes_the_size_a_reader_holds(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it (STYLE.md)"


def test_the_search_and_the_foundations_import_no_torch():
    code = (
        "import sys\n"
        "import evo_sparse.search.algorithms, evo_sparse.models.masks, evo_sparse.stats.analysis\n"
        "import evo_sparse.foundations.config, evo_sparse.foundations.paths, evo_sparse.foundations.devices\n"
        "import evo_sparse.foundations.storage, evo_sparse.foundations.progress, evo_sparse.foundations.presets\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
