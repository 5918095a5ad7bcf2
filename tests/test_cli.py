"""The command line end to end on the smoke preset: run, show, rerun, resume, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evo_sparse.cli import RUN_OPTIONS, cli
from evo_sparse.foundations.config import RunConfig, flat_items
from evo_sparse.foundations.presets import preset
from evo_sparse.models import wrn
from evo_sparse.models.masks import Layout, Mask
from evo_sparse.runs.run import read_config

SMOKE = ["run", "--preset", "smoke", "--generations", "3", "--pop", "6", "--keep", "3", "--sparsity", "0.5", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_smoke(runs_dir: Path, *extra: str) -> Path:
    result = invoke(*SMOKE, "--runs-dir", str(runs_dir), *extra)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def results(folder: Path) -> dict:
    """What a run computed: settings, journal (in (gen, index) order: worker processes journal evaluations as they
    finish) and checkpoint, without wall-clock seconds or paths."""

    def timeless(obj):
        if isinstance(obj, dict):
            return {k: timeless(v) for k, v in obj.items() if k != "seconds"}
        return [timeless(v) for v in obj] if isinstance(obj, list) else obj

    journal = [json.loads(line) for line in (folder / "evaluations.jsonl").read_text().splitlines()]
    journal.sort(key=lambda row: (row["gen"], row["index"]))
    config = read_config(folder / "config.json").hashed_items()
    return timeless(
        {"config": config, "journal": journal, "checkpoint": json.loads((folder / "checkpoint.json").read_text())}
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    return run_smoke(tmp_path_factory.mktemp("runs"))


def test_smoke_run_writes_a_readable_run_folder(smoke_run):
    summary = json.loads(invoke("show", str(smoke_run), "--json").stdout)
    assert summary["generations_done"] == 3 and summary["finished"]
    assert summary["evaluations"] == 12 and summary["failed_evaluations"] == 0
    assert [e["nevals"] for e in summary["logbook"]] == [6, 3, 3]
    assert summary["population_size"] == 6 and summary["keep"] == 3 and len(summary["population"]) == 6
    assert summary["model"] == {**summary["model"], "depth": 10, "width": 1}
    layout = Layout.from_units(wrn.units(10, 1))
    counts = layout.layerwise_counts(0.5)
    for entry in summary["population"] + [summary["best"]]:
        assert tuple(Mask.decode(layout, entry["mask"]).widths().values()) == counts
        assert entry["sparsity"] == pytest.approx(Mask.decode(layout, entry["mask"]).sparsity)
    best = max(e["fitness"] for e in summary["population"])
    assert summary["best"]["fitness"] == pytest.approx(best)
    assert summary["best"]["fitness"] >= max(e["max"] for e in summary["logbook"]) - 1e-12


def test_best_never_decreases_and_fitness_beats_chance(smoke_run):
    summary = json.loads(invoke("show", str(smoke_run), "--json").stdout)
    maxima = [e["max"] for e in summary["logbook"]]
    assert maxima == sorted(maxima)  # Weedout keeps the best K, so the maximum cannot drop
    assert summary["best"]["fitness"] > 0.15  # synthetic data, 10 classes: chance is 0.10


def test_show_text_summary(smoke_run):
    out = invoke("show", str(smoke_run)).stdout
    assert "weedout" in out and "3/3 generations, 12 trainings, finished" in out and "WRN-10-1" in out


def test_rerun_of_finished_run_changes_nothing(smoke_run):
    before = files(smoke_run)
    assert run_smoke(smoke_run.parent.parent) == smoke_run
    assert files(smoke_run) == before


def test_interrupted_run_resumes_to_the_same_result(tmp_path, smoke_run):
    """A run stopped after generation 1 (checkpoint rolled back, journal kept) resumes to identical files."""
    folder = run_smoke(tmp_path)
    assert results(folder) == results(smoke_run)
    # Roll the folder back to the state after generation 1 plus one evaluation of generation 2: re-create that
    # checkpoint by running 1 generation elsewhere, keep the journal rows it plus one more.
    one = run_smoke(tmp_path / "one", "--generations", "1")
    rows = (folder / "evaluations.jsonl").read_text().splitlines(keepends=True)
    (folder / "evaluations.jsonl").write_text("".join(rows[:7]) + rows[7][:20])  # torn 8th row
    ckpt = json.loads((one / "checkpoint.json").read_text())
    ckpt["settings"] = json.loads((folder / "checkpoint.json").read_text())["settings"]  # generations 3, not 1
    (folder / "checkpoint.json").write_text(json.dumps(ckpt))
    assert run_smoke(tmp_path) == folder
    assert results(folder) == results(smoke_run)


def test_every_run_option_maps_to_a_config_field():
    settings = flat_items(RunConfig())
    keys = [key for key, _ in RUN_OPTIONS.values()]
    assert len(set(keys)) == len(keys) and set(keys) <= set(settings)
    # Settings without an option are fixed by presets on purpose; anything else must be reachable from the CLI.
    assert set(settings) - set(keys) == {
        "preset",
        "data.split_seed",
        "data.synthetic_train",
        "train.momentum",
        "train.eval_batch_size",
        "search.algorithm_source",  # set by evo-sparse from the plug-in, never by the user
    }
    help_text = invoke("run", "--help").stdout
    assert all(f"--{option}" in help_text for option in [*RUN_OPTIONS, "preset"])


def test_options_override_the_preset(tmp_path):
    folder = run_smoke(tmp_path, "--width", "2", "--train-images", "256")
    saved = read_config(folder / "config.json")
    assert saved.model.width == 2 and saved.train.train_images == 256
    assert saved.search.generations == 3 and saved.data.dataset == preset("smoke").data.dataset


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--pop", "1"], "--pop"),
        (["--keep", "6"], "--keep"),
        (["--sparsity", "1.0"], "--sparsity"),
        (["--sparsity", "-0.1"], "--sparsity"),
        (["--generations", "0"], "--generations"),
        (["--depth", "15"], "--depth"),
        (["--pop", "many"], "--pop"),
        (["--preset", "huge"], "--preset"),
        (["--algorithm", "annealing"], "--algorithm"),
        (["--seed", "-5"], "--seed must be an integer in 0..2**32-1"),
        (["--seed", str(2**32)], "--seed"),
        (["--replicates", "0"], "--replicates must be at least 1"),
        (["--eval-timeout", "-1"], "--eval-timeout must be 0 (automatic) or more seconds"),
        (["--preset", "cpu", "--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    base = ["run", "--preset", "smoke", "--quiet", "--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evo-sparse: error:") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_show_on_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(cli, ["show", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.stderr


def test_ga_run_keeps_exact_sparsity(tmp_path):
    folder = run_smoke(tmp_path, "--algorithm", "ga", "--sparsity", "0.8")
    summary = json.loads(invoke("show", str(folder), "--json").stdout)
    layout = Layout.from_units(wrn.units(10, 1))
    assert summary["algorithm"] == "ga" and summary["generations_done"] == 3
    assert all(0 < e["nevals"] <= 3 for e in summary["logbook"][1:])  # only changed offspring are evaluated
    for entry in summary["population"]:
        assert tuple(Mask.decode(layout, entry["mask"]).widths().values()) == layout.layerwise_counts(0.8)


def test_compile_is_a_flag_for_cuda_and_stops_on_the_cpu(tmp_path, monkeypatch):
    args = ["run", "--preset", "smoke", "--device", "cpu", "--runs-dir", str(tmp_path), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--compile"])
    assert result.exit_code == 2 and "--compile is for CUDA devices" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_compile_wraps_the_training_step(monkeypatch):
    import torch

    from evo_sparse.foundations.config import TrainConfig
    from evo_sparse.training.trainer import forward_of

    seen = []
    monkeypatch.setattr(torch, "compile", lambda m: seen.append(m) or m)
    net = torch.nn.Linear(2, 2)
    assert forward_of(net, TrainConfig()) is net and not seen
    assert forward_of(net, TrainConfig(compile=True)) is net and seen == [net]
