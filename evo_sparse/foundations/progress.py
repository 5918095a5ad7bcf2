"""Progress on stderr: one line per evaluation (rewritten in place on a terminal) with the best so far and an ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from evo_sparse.foundations.config import SearchConfig


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Counts evaluations of a search; the ETA comes from the wall-clock rate of the evaluations computed here
    (so parallel workers are accounted for), the s/eval figure from their own mean duration."""

    def __init__(
        self,
        cfg: SearchConfig,
        *,
        enabled: bool = True,
        stream=None,
        budget_left: Callable[[], float | None] = lambda: None,
        asks: bool = False,
    ):
        """``budget_left()``: trainings the run's budget still allows (None: no budget), which then bounds the ETA;
        ``asks``: an ask/tell run, whose generations are its asks (no count is known in advance)."""
        self.cfg, self.budget_left, self.asks = cfg, budget_left, asks
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.seconds: list[float] = []
        self.best: float | None = None
        self.gen = self.done_in_gen = self.nevals = 0
        self.start = time.perf_counter()
        self.first: float | None = None  # when the first evaluation computed here started
        self.left_at_first: float | None = None  # the budget left then

    def _write(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def remaining_evaluations(self) -> float:
        """Evaluations left in this generation plus P-K for every later one (an upper bound for the GA), at most the
        trainings the budget still allows."""
        later = self.cfg.generations - self.gen - 1
        left = self.budget_left()
        if self.asks:
            return max(0.0, left or 0.0)
        count = self.nevals - self.done_in_gen + later * (self.cfg.population - self.cfg.survivors)
        return count if left is None else max(0.0, min(count, left))

    def _eta(self) -> str:
        """Wall-clock time per evaluation computed here times the evaluations left; for an ask/tell run, whose
        trainings differ in length, time per training of the budget spent here times the trainings left."""
        if not self.seconds:
            return "?"
        elapsed = time.perf_counter() - self.first
        left = self.budget_left()
        if self.asks and left is not None and self.left_at_first is not None and self.left_at_first > left:
            return format_seconds(elapsed / (self.left_at_first - left) * left)
        return format_seconds(elapsed / len(self.seconds) * self.remaining_evaluations())

    def _where(self) -> str:
        return f"ask {self.gen + 1}" if self.asks else f"gen {self.gen + 1}/{self.cfg.generations}"

    def start_generation(self, gen: int, nevals: int) -> None:
        self.gen, self.nevals, self.done_in_gen = gen, nevals, 0
        if self.first is None:
            self.first = time.perf_counter()
            self.left_at_first = self.budget_left()

    def evaluated(self, record: dict, reused: bool = False) -> None:
        self.done_in_gen += 1
        if not reused:
            self.seconds.append(record.get("seconds") or 0.0)
        fit = record.get("fitness")
        if fit is not None and (self.best is None or fit > self.best):
            self.best = fit
        mean = sum(self.seconds) / len(self.seconds) if self.seconds else None
        eta = self._eta()
        shown = "failed" if fit is None else f"{fit:.4f}"
        best = "-" if self.best is None else f"{self.best:.4f}"
        speed = f"{mean:.1f}s/eval" if mean is not None else "reused"
        self._write(
            f"{self._where()}  eval {self.done_in_gen}/{self.nevals}  fitness {shown}  best {best}  {speed}  ETA {eta}"
        )

    def end_generation(self, state) -> None:
        last = state.logbook[-1]
        avg = "-" if last["avg"] is None else f"{last['avg']:.4f}"
        top = "-" if last["max"] is None else f"{last['max']:.4f}"
        self._write(
            f"{self._where()} done: mean {avg}  max {top}  "
            f"failed {last['failed']}  elapsed {format_seconds(time.perf_counter() - self.start)}",
            final=True,
        )


class StudyProgress:
    """One stderr line per finished step: steps done, share of the work, elapsed time and an ETA.

    Work is counted in training images (a search evaluation's budget, a full training's epochs) weighted by the
    network's cost per image (``study.final.training_cost``: a dense network costs ~10x one at 0.9 sparsity); the ETA
    is the rate of the work computed in this process applied to the work left (steps already on disk cost nothing)."""

    def __init__(self, log: Callable[[str], None], *, enabled: bool = True, label: str = "study"):
        self.log, self.enabled, self.label = log, enabled, label
        self.total = self.done = self.computed = 0
        self.steps = self.steps_done = 0
        self.start = time.perf_counter()

    def add(self, steps: int, work: float) -> None:
        self.steps += steps
        self.total += work

    def revise(self, steps: int, work: float, jobs: list) -> None:
        """Replace ``steps`` planned with ``work`` by the ``jobs`` they turned out to be (each with its ``work``),
        e.g. a search's final trainings once its masks, and so their widths, are known."""
        self.steps += len(jobs) - steps
        self.total += sum(j.work for j in jobs) - work

    def skipped(self, steps: int, work: float, what: str = "final trainings") -> None:
        """``steps`` found done on disk: counted as done, one line for all of them."""
        self.steps_done += steps
        self.done += work
        if steps and self.enabled:
            self.log(f"[{self.label}] {steps} {what} already on disk")

    def skip_done(self, jobs: list) -> None:
        """Count the final-training ``jobs`` whose result is already on disk as done."""
        on_disk = [j for j in jobs if j.path.exists()]
        self.skipped(len(on_disk), sum(j.work for j in on_disk))

    def trained(self, label: str, job, record: dict[str, Any]) -> None:
        """The line of a finished final training: ``label``, then its test accuracy or why it failed."""
        acc = record["final_test_acc"]
        result = f"test acc {acc:.4f}" if acc is not None else f"failed: {record['reason']}"
        self.finished(f"{label}: {result}", job.work)

    def finished(self, what: str, work: float, *, computed: bool = True) -> None:
        self.steps_done += 1
        self.done += work
        self.computed += work if computed else 0
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        left = self.total - self.done
        eta = format_seconds(elapsed / self.computed * left) if self.computed else "?"
        share = self.done / self.total if self.total else 1.0
        self.log(
            f"[{self.label}] {self.steps_done}/{self.steps} {what}  ({share:.0%} of the work, elapsed "
            f"{format_seconds(elapsed)}, ETA {eta})"
        )
