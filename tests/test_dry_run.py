"""``--dry-run`` on ``run``, ``paper``, ``compare`` and ``final``: it counts the trainings and their images, writes
nothing, and its time estimate is within 2x of what a smoke run measures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from evo_sparse.cli import build_config, cli
from evo_sparse.runs.run import execute
from evo_sparse.study.estimate import for_run, seconds

DRY = "dry run: nothing was trained or written"


def invoke(*args: str):
    result = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == DRY
    assert "estimated time: " in result.stdout and "(an estimate: " in result.stdout, result.stdout
    return result.stdout


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "args, total",
    [
        # P 6 + 2 generations x (P - K) 3 = 12 evaluations of 512 images
        (["run", "--preset", "smoke"], "total: 12 trainings, 6,144 training images"),
        # 12 evaluations; found, random: 1 full training (2 epochs of the 1,024 images) each, with 1 and 2 brief ones;
        # dense: 1 full training and 2 brief ones
        (
            ["paper", "--preset", "smoke", "--sparsities", "0,0.5", "--seeds", "1", "--final-masks", "1",
             "--final-seeds", "1"],
            f"total: 20 trainings, {12 * 512 + 3 * 2048 + 5 * 512:,} training images",
        ),
        # two algorithms x 2 runs of 12 evaluations for weedout (the GA: an upper bound), no final training
        (["compare", "--preset", "smoke", "--runs", "2"], None),
    ],
)  # fmt: skip
def test_a_dry_run_counts_the_trainings_and_writes_nothing(tmp_path, args, total):
    out = invoke(*args, "--workers", "1", "--runs-dir", str(tmp_path / "runs"), "--tensorboard", str(tmp_path / "tb"))
    if total:
        assert total in out.splitlines(), out
    assert "estimated disk: " in out and "TensorBoard events" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tb").exists()


def test_a_dry_run_of_final_counts_what_is_missing_and_writes_nothing(tmp_path):
    cfg = build_config("smoke", {"generations": 1, "pop": 2, "runs_dir": str(tmp_path / "runs"), "workers": 1})
    folder = execute(cfg, show_progress=False, log=lambda _: None)
    before = snapshot(tmp_path)
    out = invoke("final", str(folder), "--epochs", "1", "--seeds", "1", "--workers", "1")
    # found and random: 1 each, dense: 1; brief trainings 1 (found), 2 (random), 2 (dense)
    assert f"total: 8 trainings, {3 * 1024 + 5 * 512:,} training images" in out.splitlines(), out
    assert snapshot(tmp_path) == before


def test_the_time_estimate_is_within_2x_of_a_measured_smoke_run(tmp_path):
    """Both in this process, one evaluation at a time: the estimate times the network's steps, the run does them."""
    cfg = build_config("smoke", {"runs_dir": str(tmp_path / "runs"), "workers": 1, "backend": "local"})
    estimate = sum(seconds(for_run(cfg), torch.device("cpu"), workers=1))
    start = time.perf_counter()
    execute(cfg, show_progress=False, log=lambda _: None)
    measured = time.perf_counter() - start
    print(f"dry-run estimate {estimate:.2f} s, measured {measured:.2f} s, ratio {estimate / measured:.2f}")
    assert 0.5 <= estimate / measured <= 2.0
