"""The README's two commands are what CI and a new user run, and the main one means what the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from evo_sparse.cli import RUN_OPTIONS, build_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_install_and_run_then_install_and_test():
    run, test = readme_commands()
    assert "pip install -e ." in run and run.endswith("evo-sparse run --generations 10 --pop 20")
    assert 'pip install -e ".[dev]"' in test and test.endswith("python -m pytest -q")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_main_command_is_the_cpu_preset_with_10_by_20():
    args = shlex.split(readme_commands()[0].split("evo-sparse run", 1)[1])
    options = {args[i].lstrip("-").replace("-", "_"): int(args[i + 1]) for i in range(0, len(args), 2)}
    cfg = build_config("cpu", options)
    assert (cfg.search.generations, cfg.search.population, cfg.search.survivors) == (10, 20, 10)
    assert cfg.data.dataset == "cifar10" and cfg.preset == "cpu"


def test_every_run_option_is_documented():
    for option in [*RUN_OPTIONS, "preset"]:
        assert f"`--{option}`" in README, option


def test_every_figure_and_file_the_readme_links_is_in_the_repository():
    """An image or link into the repository (``![..](plots/x.png)``, ``[..](examples/x.py)``) points at a file that
    exists, so a redrawn or moved study cannot leave the README showing a figure that is gone."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [t for t in targets if not re.match(r"[a-z]+://|#", t)]
    assert local, "the README links no figure"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links files that do not exist: {missing}"
