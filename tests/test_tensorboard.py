"""``--tensorboard DIR``: the event files hold every evaluation, generation and final-training epoch once (read back
by TensorBoard's own reader) across resumed and repeated commands; the run folder's name does not change; without
TensorBoard installed the command stops with one line naming the install command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from evo_sparse.cli import build_config, cli  # noqa: E402
from evo_sparse.foundations.paths import run_folder  # noqa: E402
from evo_sparse.runs import checkpoint  # noqa: E402
from evo_sparse.runs.run import execute  # noqa: E402

INSTALL_LINE = (
    "evo-sparse: error: --tensorboard needs TensorBoard, which is not installed: pip install 'evo-sparse[tensorboard]'"
)
GENERATION_TAGS = ("generation/min_fitness", "generation/mean_fitness", "generation/max_fitness")


def smoke(tmp_path: Path, generations: int = 2, tensorboard: bool = True):
    options = {"generations": generations, "pop": 4, "runs_dir": str(tmp_path / "runs"), "workers": 1}
    return build_config("smoke", options | ({"tensorboard": str(tmp_path / "tb")} if tensorboard else {}))


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event in ``folder``'s event files, duplicates included, by tag."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0}, purge_orphaned_data=False).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def hparams(folder: Path) -> dict[str, object]:
    acc = EventAccumulator(str(folder), purge_orphaned_data=False).Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def run_state(folder: Path) -> tuple[list[dict], list[dict]]:
    journal = [json.loads(line) for line in (folder / "evaluations.jsonl").read_text().splitlines()]
    return journal, json.loads((folder / "checkpoint.json").read_text())["logbook"]


def board_of(tmp_path: Path, folder: Path) -> Path:
    return tmp_path / "tb" / folder.relative_to(tmp_path / "runs")


def check_board(board: Path, folder: Path, population: int = 4) -> None:
    """The board holds each journal row and logbook entry of ``folder`` exactly once, with its values."""
    journal, logbook = run_state(folder)
    found = scalars(board)
    for tag, steps in found.items():
        assert len(steps) == len({s for s, _ in steps}), f"{tag} has a step twice: {steps}"
    assert found["evaluation/seconds"] == [(i, pytest.approx(r["seconds"])) for i, r in enumerate(journal)]
    ok = [(i, pytest.approx(r["fitness"])) for i, r in enumerate(journal) if r["status"] == "ok"]
    assert found["evaluation/fitness"] == ok
    for tag, key in zip(GENERATION_TAGS, ("min", "avg", "max"), strict=True):
        assert found[tag] == [(e["gen"], pytest.approx(e[key])) for e in logbook]
    assert found["generation/failed_share"] == [(e["gen"], e["failed"] / population) for e in logbook]
    best = [max(e["max"] for e in logbook[: i + 1]) for i in range(len(logbook))]
    assert found["hparam/best_fitness"] == [(i, pytest.approx(b)) for i, b in enumerate(best)]


def test_a_run_writes_every_evaluation_and_generation_and_keeps_its_folder(tmp_path):
    cfg = smoke(tmp_path)
    folder = execute(cfg, show_progress=False, log=lambda _: None)
    assert folder == run_folder(cfg.updated({"tensorboard": None}))  # not part of what the folder's name hashes
    board = board_of(tmp_path, folder)
    assert board == tmp_path / "tb" / folder.parent.name / folder.name
    check_board(board, folder)
    settings = hparams(board)
    assert settings["search.sparsity"] == pytest.approx(0.5) and settings["search.algorithm"] == "weedout"
    assert "tensorboard" not in settings and "runs_dir" not in settings  # where it runs, not what it computes


def test_a_resumed_run_appends_without_writing_a_step_twice(tmp_path, monkeypatch):
    cfg = smoke(tmp_path, generations=3)
    save, calls = checkpoint.save, []

    def save_then_interrupt(*args, **kwargs):  # Ctrl-C after generation 1 was evaluated, before its checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, show_progress=False, log=lambda _: None)
    folder = run_folder(cfg)
    board = board_of(tmp_path, folder)
    assert [s for s, _ in scalars(board)["evaluation/seconds"]] == list(range(6))  # 4 + 2, journaled
    monkeypatch.setattr(checkpoint, "save", save)
    assert execute(cfg, show_progress=False, log=lambda _: None) == folder
    check_board(board, folder)
    files = sorted(board.iterdir())
    execute(cfg, show_progress=False, log=lambda _: None)  # finished: nothing new, no new file
    assert sorted(board.iterdir()) == files
    check_board(board, folder)


def test_a_board_started_on_resume_catches_up_with_the_journal(tmp_path, monkeypatch):
    """Events lost (a run killed before its writer flushed) or never written (--tensorboard added on resuming) are
    written from the journal and the checkpoint, once."""
    save, calls = checkpoint.save, []

    def save_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(smoke(tmp_path, generations=3, tensorboard=False), show_progress=False, log=lambda _: None)
    assert not (tmp_path / "tb").exists()
    monkeypatch.setattr(checkpoint, "save", save)
    folder = execute(smoke(tmp_path, generations=3), show_progress=False, log=lambda _: None)
    check_board(board_of(tmp_path, folder), folder)


def test_final_training_writes_each_networks_curves_once(tmp_path):
    folder = execute(smoke(tmp_path, generations=1, tensorboard=False), show_progress=False, log=lambda _: None)
    args = ["final", str(folder), "--epochs", "2", "--seeds", "1", "--final-masks", "1", "--no-dense", "--workers", "1"]
    args += ["--quiet", "--tensorboard", str(tmp_path / "tb")]
    for _ in range(2):  # the second time everything is trained: nothing is written twice
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    results = Path(result.stdout.strip().splitlines()[-1])
    for kind in ("found", "random"):
        record = json.loads((results / f"{kind}_0_seed0.json").read_text())
        found = scalars(board_of(tmp_path, results / f"{kind}_0_seed0"))
        for tag in ("val_acc", "val_loss", "train_loss"):
            assert found[f"final/{tag}"] == [(e, pytest.approx(v)) for e, v in enumerate(record[tag], start=1)]
        assert found["final/test_acc"] == [(2, pytest.approx(record["final_test_acc"]))]


@pytest.mark.parametrize("command", ["run", "final"])
def test_without_tensorboard_the_command_stops_with_the_install_line(tmp_path, monkeypatch, command):
    if command == "final":
        folder = execute(smoke(tmp_path, generations=1, tensorboard=False), show_progress=False, log=lambda _: None)
        args = ["final", str(folder), "--epochs", "1", "--seeds", "1", "--workers", "1"]
    else:
        args = ["run", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--workers", "1"]
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it fails, as when not installed
    result = CliRunner().invoke(cli, [*args, "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2 and result.stderr.strip() == INSTALL_LINE, result.output
    assert sorted(tmp_path.rglob("*")) == before  # nothing trained, nothing written
