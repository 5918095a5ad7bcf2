"""The paper experiment and GA vs Random Search end to end through the CLI, on the smoke preset.

The default tier runs small studies in this process (``--workers 1``); the exact commands the issue names (worker
processes, 3 minutes and 2 minutes on a busy 2-core machine) are behind the ``slow`` marker.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from evo_sparse.cli import FINAL_OPTIONS, cli
from evo_sparse.foundations import paths
from evo_sparse.foundations.config import FinalConfig
from evo_sparse.foundations.progress import StudyProgress
from evo_sparse.models.masks import Mask
from evo_sparse.runs import run
from evo_sparse.study import final, plots
from evo_sparse.study.paper import ROW_KEYS, planned_job_work
from evo_sparse.training.data import load_splits
from evo_sparse.training.fitness import Evaluator

# Seconds, not minutes: one generation, one seed, small validation and test splits, one epoch of full training.
SMALL = ["--preset", "smoke", "--generations", "1", "--pop", "3", "--keep", "2", "--val-size", "100"]
PAPER = ["paper", *SMALL, "--sparsities", "0,0.5", "--seeds", "1", "--epochs", "1"]
STUDY_FIGURES = plots.FIGURES[:-1]  # all but GA vs Random Search's best_so_far


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def last_line(result) -> Path:
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def timeless(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "epoch_seconds", "source")} for r in rows]


def first_run_jobs(study: Path) -> tuple[Path, FinalConfig, list[final.Job]]:
    """The study's first run folder, the final recipe it was trained by, and its found and random jobs."""
    run_dir = study / json.loads((study / "study.json").read_text())["runs"][0]
    recipe = FinalConfig.from_dict(json.loads(next(run_dir.glob("final_*/final.json")).read_text()))
    return run_dir, recipe, final.run_jobs(run_dir, recipe, dense=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    runs_dir = tmp_path_factory.mktemp("study")
    return last_line(invoke(*PAPER, "--workers", "1", "--quiet", "--runs-dir", str(runs_dir)))


def test_paper_writes_the_table_the_analysis_and_every_figure(study):
    rows = json.loads((study / "results.json").read_text())
    kinds = [r["kind"] for r in rows]
    # K=2 masks x 2 training seeds for found and random; the dense parent under 2 training seeds
    assert kinds.count("found") == 4 and kinds.count("random") == 4 and kinds.count("dense") == 2
    assert all(r["status"] == "ok" and 0 <= r["final_test_acc"] <= 1 and len(r["val_acc"]) == 1 for r in rows)
    assert {r["sparsity"] for r in rows} == {0.0, 0.5} and {r["seed"] for r in rows} == {0}
    assert max(r["final_test_acc"] for r in rows) > 0.2  # learning, not chance (0.1)
    dense = [r for r in rows if r["kind"] == "dense"]
    assert all(r["params"] > max(x["params"] for x in rows if x["kind"] != "dense") for r in dense)
    assert all(r["early_fitness"] is not None for r in rows)  # random and dense masks get it too
    assert all(r["early_fitness_heldout"] is not None for r in rows)  # and all of them a held-out replicate's
    with open(study / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and tuple(table[0]) == ROW_KEYS
    assert {"sparsity", "seed", "kind", "early_fitness", "final_test_acc", "params", "flops"} <= set(ROW_KEYS)
    analysis = json.loads((study / "analysis.json").read_text())
    half = analysis["sparsities"][0]
    assert half["sparsity"] == 0.5 and half["found"]["n"] == 2 and half["random"]["n"] == 2
    assert half["p_value"] is not None and half["noise_ceiling"]["masks"] == 4
    assert half["early_vs_final"]["n"] == 4 and analysis["dense"]["n"] == 1
    assert analysis["early_measure"] == half["early_vs_final"]["early_measure"] == "heldout"
    assert json.loads((study / "early_vs_final.json").read_text())["early_measure"] == "heldout"
    described = json.loads((study / "study.json").read_text())
    for name in STUDY_FIGURES:
        assert (study / f"{name}.png").exists() and (study / f"{name}.pdf").exists(), name
        for source in json.loads((study / f"{name}.json").read_text())["sources"]:
            assert (Path(source) / "config.json").exists(), (name, source)
    assert len(described["runs"]) == 1 and len(described["dense"]) == 1


def test_rerunning_the_study_changes_nothing(study):
    before = snapshot(study.parent)
    result = invoke(*PAPER, "--workers", "1", "--runs-dir", str(study.parent))
    assert last_line(result) == study
    assert "study already finished" in result.stderr and "sparsity 0.5" in result.stdout
    assert snapshot(study.parent) == before


def test_early_fitness_is_the_search_fitness_procedure(study):
    rows = json.loads((study / "results.json").read_text())
    found = next(r for r in rows if r["kind"] == "found")
    random = next(r for r in rows if r["kind"] == "random")
    cfg, _ = final.load_run(study / found["source"])
    splits = load_splits(cfg, log=lambda _: None)
    evaluator = Evaluator(cfg, splits)
    heldout = Evaluator(cfg, splits, replicates=[cfg.train.replicates])  # a replicate the search never trained under
    for row in (found, random):
        mask = Mask.decode(evaluator.layout, row["mask"])
        assert evaluator.evaluate_mask(mask)["fitness"] == row["early_fitness"]
        assert heldout.evaluate_mask(mask)["fitness"] == row["early_fitness_heldout"]
    hall_of_fame = final.load_run(study / found["source"])[1]["hall_of_fame"]
    assert found["mask"] in [e["mask"] for e in hall_of_fame]


def test_training_seeds_share_mask_weights_and_early_fitness(study):
    rows = json.loads((study / "results.json").read_text())
    pairs = {}
    for r in rows:
        pairs.setdefault((r["sparsity"], r["seed"], r["kind"], r["index"]), []).append(r)
    assert all(len(p) == 2 for p in pairs.values())
    for a, b in pairs.values():
        assert (a["mask"], a["early_fitness"], a["params"]) == (b["mask"], b["early_fitness"], b["params"])
    assert any(a["val_acc"] != b["val_acc"] for a, b in pairs.values())  # the data order differs


def test_a_lost_result_is_trained_again_to_the_same_numbers(study):
    run_dir, recipe, jobs = first_run_jobs(study)
    lost = paths.final_folder(run_dir, recipe) / "random_1_seed1.json"
    before = {j.path: j.path.read_bytes() for j in jobs}
    lost.unlink()
    assert final.pending(jobs) == [j for j in jobs if j.path == lost]
    records = final.execute(jobs, workers=1)
    assert timeless(records) == timeless([json.loads(b) for b in before.values()])
    assert all(j.path.read_bytes() == before[j.path] for j in jobs if j.path != lost)


def test_a_result_trained_elsewhere_points_at_its_run_where_it_is_now(study):
    """Run folders moved or extracted from an archive keep their results: a record's source is the job's folder,
    not the path written where it was trained, so the study's rows stay relative to the study folder."""
    run_dir, recipe, jobs = first_run_jobs(study)
    original, stat = jobs[0].path.read_bytes(), jobs[0].path.stat()
    jobs[0].path.write_text(json.dumps(json.loads(original) | {"source": "/another/machine/runs/weedout_x/seed_0"}))
    try:
        assert [r["source"] for r in final.execute(jobs, workers=1)] == [j.source for j in jobs]
        assert {r["source"] for r in final.read_results(jobs[0].path.parent)} == {jobs[0].source}  # `plot RUN_DIR`
    finally:
        jobs[0].path.write_bytes(original)
        os.utime(jobs[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_share_of_the_work_ends_at_100_percent(study):
    """A final training planned before its mask is known weighs what its job will (a layerwise mask has the planned
    widths), and ``revise`` puts a search's jobs in its plan's place (a global mask's widths are known only then)."""
    run_dir, recipe, jobs = first_run_jobs(study)
    for kind in ("found", "random"):
        planned = planned_job_work(jobs[0].cfg, recipe, kind)
        assert all(j.work == pytest.approx(planned) for j in jobs if j.kind == kind), kind
    lines: list[str] = []
    progress = StudyProgress(lines.append)
    progress.add(1 + 3, 10.0 + 3 * 1.0)  # a search and a plan of 3 trainings, before its masks are known
    progress.finished("search", 10.0)
    progress.revise(3, 3.0, jobs)
    for job in jobs:
        progress.finished("final", job.work)
    assert lines[-1].startswith(f"[study] {1 + len(jobs)}/{1 + len(jobs)} final  (100% of the work"), lines[-1]


def test_final_command_on_one_run(study):
    run_dir = study / json.loads((study / "study.json").read_text())["runs"][0]
    args = ["final", str(run_dir), "--epochs", "1", "--final-lr", "0.02", "--seeds", "1", "--final-masks", "1"]
    result = invoke(*args, "--no-dense", "--workers", "1", "--quiet")
    out = last_line(result)
    assert out == paths.final_folder(run_dir, FinalConfig.from_dict(json.loads((out / "final.json").read_text())))
    assert sorted(p.name for p in out.glob("*_seed*.json")) == ["found_0_seed0.json", "random_0_seed0.json"]
    assert "found" in result.stdout and "n=1" in result.stdout
    dense = paths.dense_folder(final.load_run(run_dir)[0], run_dir.parent.parent) / out.name
    assert not dense.exists()  # --no-dense
    before = snapshot(out)
    started = time.perf_counter()
    assert last_line(invoke(*args, "--no-dense", "--workers", "1", "--quiet")) == out
    assert snapshot(out) == before and time.perf_counter() - started < 10


def test_every_final_option_maps_to_a_recipe_field():
    names = {f for f in FinalConfig.__dataclass_fields__}
    assert set(FINAL_OPTIONS.values()) <= names and len(set(FINAL_OPTIONS.values())) == len(FINAL_OPTIONS)
    assert names - set(FINAL_OPTIONS.values()) == {"momentum", "eval_batch_size"}  # fixed by presets on purpose
    help_text = invoke("paper", "--help").stdout
    assert all(f"--{option}" in help_text for option in FINAL_OPTIONS)
    assert "--sparsity " not in help_text and "--seed " not in help_text and "--generations" in help_text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["paper", "--sparsities", "0,1.2"], "--sparsity"),
        (["paper", "--sparsities", "-0.1,0.5"], "--sparsity"),
        (["paper", "--sparsities", "a,b"], "--sparsities"),
        (["paper", "--sparsities", "0.5,0.5"], "--sparsities"),
        (["paper", "--epochs", "0"], "--epochs"),
        (["paper", "--final-batch-size", "4096"], "--final-batch-size"),
        (["paper", "--schedule", "linear"], "--schedule"),
        (["compare", "--algorithms", "weedout"], "--algorithms"),
        (["compare", "--algorithms", "weedout,annealing"], "--algorithms"),
        (["compare", "--algorithms", "weedout,ga", "--cxpb", "0", "--mutpb", "0"], "--cxpb"),
        (["compare", "--runs", "0"], "--runs"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_work(tmp_path, args, needle):
    result = CliRunner().invoke(cli, [*args, "--preset", "smoke", "--quiet", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evo-sparse: error:") and needle in lines[0], result.stderr
    assert not any(tmp_path.iterdir())


def test_final_refuses_folders_that_are_not_finished_runs(tmp_path):
    result = CliRunner().invoke(cli, ["final", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.stderr
    from evo_sparse.foundations.presets import preset

    folder = paths.RunPaths(tmp_path / "run")
    run.write_config(folder, preset("smoke"))
    result = CliRunner().invoke(cli, ["final", str(folder.root)])
    assert result.exit_code == 2 and "unfinished" in result.stderr and len(result.stderr.splitlines()) == 1


def test_compare_prints_p_values_and_draws_best_so_far(tmp_path):
    args = ["compare", *SMALL[:2], "--generations", "2", "--pop", "4", "--runs", "2", "--sparsity", "0.9"]
    args += ["--train-images", "64", "--val-size", "100"]  # the tiniest networks and trainings: plumbing only
    result = invoke(*args, "--workers", "1", "--quiet", "--runs-dir", str(tmp_path))
    folder = last_line(result)
    assert (
        "ga vs weedout: Mann-Whitney U p = " in result.stdout
        and "budget: 6 fitness evaluations of one training of 64 images" in result.stdout
    )
    c = json.loads((folder / "comparison.json").read_text())
    assert c["budget_trainings"] == 6 and len(c["runs"]) == 4
    for r in c["runs"]:
        assert len(r["curve"]) == int(r["trainings"]) and r["curve"] == sorted(r["curve"])  # best so far never drops
        assert r["trainings"] <= 6  # no algorithm spends past the budget
        assert r["trainings"] == 6 or any(f"{r['algorithm']} seed {r['seed']}" in n for n in c["notes"])
    assert c["tests"][0]["p_value"] is not None
    for name in ("best_so_far", "fitness_over_generations"):
        assert (folder / f"{name}.png").exists() and (folder / f"{name}.pdf").exists()
    before = snapshot(tmp_path)
    assert last_line(invoke(*args, "--workers", "1", "--quiet", "--runs-dir", str(tmp_path))) == folder
    assert snapshot(tmp_path) == before


def test_compare_final_train_tests_the_fully_trained_best_masks(tmp_path):
    args = ["compare", *SMALL[:2], "--generations", "2", "--pop", "4", "--runs", "2", "--sparsity", "0.9"]
    args += ["--train-images", "64", "--val-size", "100", "--workers", "1", "--quiet", "--runs-dir", str(tmp_path)]
    result = invoke(*args, "--final-train", "--epochs", "1", "--final-seeds", "1")
    folder = last_line(result)
    assert "final test accuracy: ga vs weedout: Mann-Whitney U p = " in result.stdout
    c = json.loads((folder / "comparison.json").read_text())
    assert all(0 <= r["final_test_acc"] <= 1 for r in c["runs"]) and c["final"]["epochs"] == 1
    assert {a: s["n"] for a, s in c["final_summary"].items()} == {"weedout": 2, "ga": 2}
    assert len(list(tmp_path.rglob("found_0_seed0.json"))) == 4 and not list(tmp_path.rglob("random_*.json"))
    refused = CliRunner().invoke(cli, [*args, "--epochs", "1"])
    assert refused.exit_code == 2 and "need --final-train" in refused.stderr


# --- the exact commands of the issue: worker processes, minutes on a busy 2-core machine ------------------------------


@pytest.mark.slow
def test_paper_smoke_command_of_the_issue(tmp_path):
    args = ["paper", "--preset", "smoke", "--sparsities", "0,0.5,0.9", "--seeds", "2", "--generations", "2"]
    started = time.perf_counter()
    folder = last_line(invoke(*args, "--pop", "4", "--runs-dir", str(tmp_path)))
    assert time.perf_counter() - started < 180
    assert len(json.loads((folder / "results.json").read_text())) == 2 * 2 * (2 * 2 * 2) + 2 * 2
    assert all((folder / f"{name}.pdf").exists() for name in STUDY_FIGURES)
    before = snapshot(tmp_path)
    assert last_line(invoke(*args, "--pop", "4", "--runs-dir", str(tmp_path))) == folder
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_compare_smoke_command_of_the_issue(tmp_path):
    args = ["compare", "--preset", "smoke", "--algorithms", "weedout,ga", "--runs", "3", "--generations", "3"]
    result = invoke(*args, "--pop", "6", "--runs-dir", str(tmp_path))
    folder = last_line(result)
    assert "Mann-Whitney U p = " in result.stdout and (folder / "best_so_far.png").exists()
    c = json.loads((folder / "comparison.json").read_text())
    assert c["budget_trainings"] == 12 and all(r["trainings"] == 12 for r in c["runs"])
