"""TensorBoard event files (``--tensorboard DIR``, the ``tensorboard`` extra): a view of a run's own state, never a
second record of it.

Under ``DIR`` each search gets the folder its run folder has under ``--runs-dir`` (``<algorithm>_<hash>/seed_<seed>``),
so TensorBoard lists runs as the project names them, and each fully trained network one more level below
(``.../final_<hash>/<kind>_<index>_seed<t>``). A search writes:

- per evaluation (step: its line in the journal, from 0): ``evaluation/fitness`` (if it succeeded),
  ``evaluation/seconds``;
- per generation (step: the generation, from 0): ``generation/min_fitness``, ``generation/mean_fitness``,
  ``generation/max_fitness`` and ``generation/failed_share`` (of the population), and ``hparam/best_fitness``: the best
  fitness so far, the metric of the run's settings (the hashed ones), which the HParams tab lists once per run;

and a network's final training, per epoch (step: the epoch, from 1), ``final/val_acc``, ``final/val_loss`` and
``final/train_loss``, then ``final/test_acc`` at the last epoch.

Every value is written from the journal, the checkpoint's logbook or a result file, and a value at a step the folder's
event files already hold is not written again: each ``Board`` reads back what earlier starts wrote, so a resumed (or
rerun) command appends only what is missing, and one killed before its writer flushed writes what was lost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.paths import RunPaths
from evo_sparse.foundations.storage import read_jsonl

INSTALL = "pip install 'evo-sparse[tensorboard]'"
METRIC = "hparam/best_fitness"


def summary_writer():
    """torch's ``SummaryWriter`` class; ConfigError, one line with the install command, when TensorBoard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard needs TensorBoard, which is not installed: {INSTALL}") from None
    return SummaryWriter


def written(folder: Path) -> tuple[dict[str, set[int]], bool]:
    """({scalar tag: steps} that ``folder``'s event files hold, whether they hold the run's hparams)."""
    if not folder.is_dir():
        return {}, False
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}, purge_orphaned_data=False).Reload()
    steps = {tag: {e.step for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    try:
        has_hparams = bool(acc.PluginTagToContent("hparams"))
    except KeyError:
        has_hparams = False
    return steps, has_hparams


class Board:
    """One folder of event files: ``scalar`` writes a value at a step unless the folder already holds one there. The
    writer opens at the first value to write, so a board with nothing new makes no file."""

    def __init__(self, folder: str | Path):
        self.writer_class = summary_writer()
        self.folder = Path(folder)
        self.steps, self.has_hparams = written(self.folder)
        self.writer = None

    def _writer(self):
        if self.writer is None:
            self.writer = self.writer_class(str(self.folder))
        return self.writer

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        if value is None or step in self.steps.setdefault(tag, set()):
            return
        self._writer().add_scalar(tag, float(value), step)
        self.steps[tag].add(step)

    def hparams(self, settings: dict[str, Any], metric: str) -> None:
        """The HParams tab's entry of this folder (its settings, and ``metric`` as the scalar to show), once."""
        if self.has_hparams:
            return
        from torch.utils.tensorboard.summary import hparams

        values = {k: v for k, v in settings.items() if isinstance(v, (bool, int, float, str))}
        for summary in hparams(values, {metric: 0.0}):  # the 0.0 is not written: the metric is the scalar's values
            self._writer().file_writer.add_summary(summary)
        self.has_hparams = True

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def board_folder(root: str | Path, folder: str | Path, runs_dir: str | Path) -> Path:
    """Where ``folder`` (a run folder, or a result inside one, under ``runs_dir``) writes under ``root``."""
    return Path(root) / os.path.relpath(folder, runs_dir)


class RunBoard(Board):
    """A search's event files: ``evaluation`` as each journal row is written, ``generation`` as each checkpoint is,
    ``catch_up`` for whatever the run's files hold and the event files lack."""

    def __init__(self, cfg: RunConfig, paths: RunPaths):
        super().__init__(board_folder(cfg.tensorboard, paths.root, cfg.runs_dir))
        self.cfg, self.paths, self.best = cfg, paths, None

    @classmethod
    def open(cls, cfg: RunConfig, paths: RunPaths) -> RunBoard | None:
        """The run's board, None without ``--tensorboard``; ConfigError when TensorBoard is not installed."""
        return cls(cfg, paths) if cfg.tensorboard else None

    def evaluation(self, step: int, row: dict[str, Any]) -> None:
        if row.get("status") == "ok":
            self.scalar("evaluation/fitness", row.get("fitness"), step)
        self.scalar("evaluation/seconds", row.get("seconds"), step)

    def generation(self, entry: dict[str, Any]) -> None:
        """One logbook entry (``gen``, ``failed``, ``min``, ``avg``, ``max``: over the generation's population)."""
        gen = entry["gen"]
        self.scalar("generation/min_fitness", entry.get("min"), gen)
        self.scalar("generation/mean_fitness", entry.get("avg"), gen)
        self.scalar("generation/max_fitness", entry.get("max"), gen)
        self.scalar("generation/failed_share", entry["failed"] / self.cfg.search.population, gen)
        if entry.get("max") is not None:
            self.best = entry["max"] if self.best is None else max(self.best, entry["max"])
        self.scalar(METRIC, self.best, gen)
        self.flush()

    def catch_up(self, logbook: list[dict[str, Any]]) -> None:
        """Write the hparams and every journal row and ``logbook`` entry (the checkpoint's) not yet written."""
        self.hparams(self.cfg.computed_items(), METRIC)
        for step, row in enumerate(read_jsonl(self.paths.evaluations, repair=False)):
            self.evaluation(step, row)
        self.best = None
        for entry in logbook:
            self.generation(entry)
        self.flush()


def record_network(root: str | Path, job_path: Path, runs_dir: str | Path, record: dict[str, Any]) -> None:
    """A fully trained network's curves (a final-training record) into ``root``, beside its run's folder."""
    board = Board(board_folder(root, job_path.with_suffix(""), runs_dir))
    try:
        for tag in ("val_acc", "val_loss", "train_loss"):
            for epoch, value in enumerate(record.get(tag) or [], start=1):
                board.scalar(f"final/{tag}", value, epoch)
        if record.get("final_test_acc") is not None:
            board.scalar("final/test_acc", record["final_test_acc"], len(record.get("val_acc") or []))
    finally:
        board.close()
