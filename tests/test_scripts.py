"""The Python API from a plain script, as users write it: the README's example runs as written (at the smoke preset),
and a script without the ``__main__`` guard stops at once with one line instead of recording failed evaluations."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from evo_sparse.execution.process import UNGUARDED

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def run_script(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def at_smoke_scale(code: str) -> str:
    """The block with the smoke preset (seconds, synthetic data) and two worker processes, as on a 2-core machine."""
    assert 'preset("cpu")' in code
    return code.replace('preset("cpu").updated({', 'preset("smoke").updated({"backend": "process", "workers": 2, ')


@pytest.mark.parametrize("block", python_blocks())
def test_readme_python_example_runs_as_written(tmp_path, block):
    done = run_script(tmp_path, at_smoke_scale(block))
    assert done.returncode == 0, done.stderr[-3000:]
    journals = list(tmp_path.glob("runs/**/evaluations.jsonl"))
    assert journals and all('"failed"' not in j.read_text() for j in journals)


def test_readme_examples_are_guarded():
    for block in python_blocks():
        assert 'if __name__ == "__main__":' in block


def test_a_script_without_the_guard_stops_with_one_line(tmp_path):
    code = (
        "from evo_sparse.foundations.presets import preset\n"
        "from evo_sparse.runs.run import execute\n"
        'cfg = preset("smoke").updated({"runs_dir": "runs", "backend": "process", "workers": 2})\n'
        "execute(cfg)\n"
    )
    done = run_script(tmp_path, code)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"evo_sparse.foundations.errors.ConfigError: {UNGUARDED}"
    assert "if __name__" in UNGUARDED and "backend" in UNGUARDED
    journals = list(tmp_path.glob("runs/**/evaluations.jsonl"))
    assert all(j.read_text() == "" for j in journals)  # nothing recorded, failed or not
