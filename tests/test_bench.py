"""The fitness benchmark measures every path side by side and its population paths agree with path b."""

from __future__ import annotations

import json

from click.testing import CliRunner

from evo_sparse.cli import cli
from evo_sparse.foundations.devices import cpu_cores
from evo_sparse.foundations.presets import preset
from evo_sparse.study.bench import bench_config, format_table, run_benchmark
from evo_sparse.training.data import load_splits


def test_benchmark_reports_every_path_ratio_and_agreement():
    cfg = bench_config(preset("smoke"), train_images=64, val_images=100)
    result = run_benchmark(
        cfg, load_splits(cfg, print), sparsities=(0.0, 0.5), population=2, repeats=1, log=lambda _: None
    )
    for s in (0.0, 0.5):
        assert result["ratios"][f"b_over_a@{s}"] > 0
        assert f"a@{s}" in result["seconds_per_individual"] and f"b@{s}" in result["seconds_per_individual"]
        assert result["images_per_second"][f"b@{s}"] > 0
    # A population path computes the same fitness as one-at-a-time compacted training (path b).
    assert result["max_fitness_diff_vs_b"] and all(d < 0.02 for d in result["max_fitness_diff_vs_b"].values())
    assert all(f"c_over_b@{s}" in result["ratios"] for s in (0.0, 0.5))
    if cpu_cores() > 1:  # worker processes, one network at a time each and packed as runs pack them
        assert {"c_workers@0.5", "c_workers_packed@0.5"} <= set(result["seconds_per_individual"])
    assert result["pack"] == 4
    assert "| 0.5 |" in format_table(result)


def test_bench_command_prints_a_table_then_json():
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--preset",
            "smoke",
            "--sparsities",
            "0.5",
            "--pop",
            "2",
            "--repeats",
            "1",
            "--train-images",
            "32",
            "--val-images",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| sparsity |")
    assert "b_over_a@0.5" in json.loads(lines[-1])["ratios"]


def test_bench_rejects_bad_sparsities():
    result = CliRunner().invoke(cli, ["bench", "--sparsities", "0,half"])
    assert result.exit_code == 2 and "--sparsities" in result.stderr
