"""Replicates (the nuisance seed of a fitness), --replicates on runs, and the fidelity study (`evo-sparse fidelity`)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from evo_sparse.cli import cli
from evo_sparse.foundations.presets import preset
from evo_sparse.models.masks import Mask, sample
from evo_sparse.runs.run import summarize
from evo_sparse.stats import measurement
from evo_sparse.study import fidelity
from evo_sparse.training.data import make_synthetic
from evo_sparse.training.fitness import Evaluator
from evo_sparse.training.records import combine

DATA = make_synthetic(seed=0, train_size=256, val_size=250, test_size=10)
CFG = preset("smoke").updated({"train.train_images": 256})


def masks(ev, n=2):
    return [Mask(ev.layout, tuple(sample(ev.layout, 0.5))) for _ in range(n)]


def test_replicate_zero_is_the_fitness_runs_always_computed():
    ev = Evaluator(CFG, DATA, "cpu")
    (m,) = masks(ev, 1)
    assert Evaluator(CFG, DATA, "cpu", replicates=[0]).evaluate_mask(m) | {"seconds": 0} == ev.evaluate_mask(m) | {
        "seconds": 0
    }
    assert [r.index for r in ev.replicates] == [0]


def test_a_replicate_changes_the_batches_only():
    a, b = Evaluator(CFG, DATA, "cpu", replicates=[0]), Evaluator(CFG, DATA, "cpu", replicates=[1])
    assert all(torch.equal(a.parent[k], b.parent[k]) for k in a.parent)  # same initial weights
    assert torch.equal(a.val_x, b.val_x)  # same validation images
    sa, sb = a.replicates[0].stream, b.replicates[0].stream
    assert sa.x.shape == sb.x.shape and not torch.equal(sa.x, sb.x)  # another order and augmentation
    assert sorted(sa.y.flatten().tolist()) != sa.y.flatten().tolist()  # shuffled, not sorted
    assert a.replicates[0].train_seed != b.replicates[0].train_seed


@pytest.mark.parametrize("pack", [1, 2])
def test_replicates_average_trainings_that_each_equal_a_single_replicate(pack):
    cfg = CFG.updated({"train.replicates": 2, "train.pack": pack})
    ev = Evaluator(cfg, DATA, "cpu")
    ms = masks(ev)
    records = ev.evaluate_masks(ms)
    one = [Evaluator(cfg.updated({"train.replicates": 1}), DATA, "cpu", replicates=[r]) for r in (0, 1)]
    singles = [e.evaluate_masks(ms) for e in one]
    for j, rec in enumerate(records):
        values = [s[j]["fitness"] for s in singles]
        assert rec["replicate_fitness"] == values
        assert rec["fitness"] == pytest.approx(sum(values) / 2)
        assert rec["fitness_sd"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        assert rec["train_images"] == 2 * singles[0][j]["train_images"]
    assert any(r["replicate_fitness"][0] != r["replicate_fitness"][1] for r in records)  # the noise is real


def test_a_failed_replicate_fails_the_fitness():
    ok = {"status": "ok", "fitness": 0.5, "val_loss": 1.0, "train_loss": 1.0, "train_images": 8, "batch_size": 4}
    bad = ok | {"status": "failed", "fitness": None, "val_loss": None, "train_loss": None, "reason": "loss nan"}
    merged = combine([ok | {"seconds": 1.0, "reason": None}, bad | {"seconds": 2.0}])
    assert merged["status"] == "failed" and merged["fitness"] is None and merged["reason"] == "loss nan"
    assert merged["replicate_fitness"] == [0.5, None] and merged["seconds"] == 3.0
    assert combine([ok]) == ok  # one replicate: the record itself


def test_replicates_default_keeps_every_run_folder_name():
    assert "train.replicates" not in preset("smoke").hashed_items()
    cfg = preset("smoke").updated({"train.replicates": 2})
    assert cfg.hashed_items()["train.replicates"] == 2 and cfg.run_hash() != preset("smoke").run_hash()


def test_run_with_replicates_reports_its_noise(tmp_path):
    out = CliRunner().invoke(
        cli, ["run", "--preset", "smoke", "--replicates", "2", "--train-images", "256", "--generations", "2",
              "--backend", "local", "--runs-dir", str(tmp_path)],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    folder = out.output.strip().splitlines()[-1]
    s = summarize(folder)
    assert s["replicates"] == 2 and s["train_images_per_eval"] == 512
    noise = s["noise"]
    assert noise["measured"] and noise["replicates"] == 2 and noise["masks"] == 9
    assert noise["fitness_sd"] == pytest.approx(noise["within_sd"] / 2**0.5)
    assert "not told apart" in CliRunner().invoke(cli, ["show", folder]).output
    rows = [json.loads(line) for line in open(f"{folder}/evaluations.jsonl")]
    assert all(len(r["replicate_fitness"]) == 2 for r in rows)


def test_run_without_replicates_says_its_noise_is_not_measured():
    noise = measurement.run_noise([{"status": "ok", "fitness": 0.3, "mask": "m1:x:a"}])
    assert not noise["measured"] and "--replicates" in noise["why"]
    assert "not measured" in measurement.noise_line(noise)


def fidelity_args(tmp_path, *extra):
    return ["fidelity", "--preset", "smoke", "--masks", "4", "--replicates", "2", "--train-images", "256",
            "--backend", "local", "--runs-dir", str(tmp_path), *extra]  # fmt: skip


def test_fidelity_smoke_study_writes_its_report_and_resumes(tmp_path):
    out = CliRunner().invoke(cli, fidelity_args(tmp_path, "--sampling", "layerwise,global"))
    assert out.exit_code == 0, out.output
    folder = out.output.strip().splitlines()[-1]
    report = json.loads(open(f"{folder}/fidelity.json").read())
    assert [(e["sampling"], e["train_images"]) for e in report["settings"]] == [("global", 256), ("layerwise", 256)]
    for e in report["settings"]:
        assert e["masks"] + e["dropped"] == 4 and e["replicates"] == 2 and e["seconds_per_training"] > 0
        assert e["within_sd"] > 0 and e["icc_ci"][0] <= e["icc"] <= e["icc_ci"][1]
    for ext in ("png", "pdf", "json"):
        assert os.path.exists(f"{folder}/fidelity_reliability.{ext}")
    assert "ICC(1)" in out.output and "layerwise" in out.output
    drawn = CliRunner().invoke(cli, ["plot", folder, "--out", str(tmp_path / "plots")])
    assert drawn.exit_code == 0 and (tmp_path / "plots" / "fidelity_reliability.png").exists()
    journal = open(f"{folder}/trainings.jsonl").read().splitlines()
    assert len(journal) == 8

    again = CliRunner().invoke(cli, fidelity_args(tmp_path, "--sampling", "layerwise,global"))
    assert again.exit_code == 0 and "8 mask trainings already on disk" in again.output
    assert len(open(f"{folder}/trainings.jsonl").read().splitlines()) == 8  # nothing retrained
    assert json.loads(open(f"{folder}/fidelity.json").read()) == report

    more = CliRunner().invoke(cli, fidelity_args(tmp_path, "--masks", "5"))  # one more layerwise mask only
    assert more.exit_code == 0, more.output
    assert len(open(f"{folder}/trainings.jsonl").read().splitlines()) == 9
    widened = json.loads(open(f"{folder}/fidelity.json").read())
    assert {e["key"] for e in widened["settings"]} == {e["key"] for e in report["settings"]}  # global still reported


def test_fidelity_masks_do_not_depend_on_how_many_are_drawn():
    layout = Evaluator(CFG, DATA, "cpu").layout
    assert fidelity.masks_for(layout, CFG, "global", 3) == fidelity.masks_for(layout, CFG, "global", 5)[:3]


def test_fidelity_reference_ranks_against_longer_training(tmp_path):
    out = CliRunner().invoke(cli, fidelity_args(tmp_path, "--reference-epochs", "1"))
    assert out.exit_code == 0, out.output
    folder = out.output.strip().splitlines()[-1]
    (entry,) = json.loads(open(f"{folder}/fidelity.json").read())["settings"]
    assert entry["reference"]["n"] == 4 and -1 <= entry["reference"]["kendall_tau"] <= 1
    assert "tau vs 1 ep." in out.output


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--replicates", "1"], "--replicates must be at least 2"),
        (["--masks", "2"], "--masks must be at least 3"),
        (["--sampling", "blockwise"], "--sampling must list"),
        (["--train-images", "256,x"], "--train-images must be"),
        (["--target", "1.5"], "--target must be"),
    ],
)
def test_fidelity_bad_inputs_are_one_line(tmp_path, extra, needle):
    out = CliRunner().invoke(cli, fidelity_args(tmp_path, *extra))
    assert out.exit_code == 2 and needle in out.output and len(out.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written
