"""Test-only fault injection, switched on by the ``EVO_SPARSE_FAULT`` environment variable (unset in normal use).

The reliability tests use it to crash a run at the moments a random kill rarely hits, and to make evaluations fail.
The value is a comma-separated list of:

- ``kill-before-replace=NAME`` or ``NAME@N``: SIGKILL this process at the N-th (default first) atomic write of the
  file ``NAME`` (e.g. ``checkpoint.json``) in this process, after its temp file is written and fsync'd and before
  ``os.replace``.
- ``kill-mid-journal=N``: SIGKILL this process at the N-th journal line it appends, after half the line is written
  and fsync'd (a torn last line).
- ``fail=P``, ``nan=P``, ``oom=P``: the evaluation of a seeded share P of masks raises an error, gives a NaN
  accuracy, or runs out of device memory at the full batch size (so the retry at half the batch succeeds). The
  decision is a pure function of (run seed, mask) (``fitness_fault``), the same in every process, so worker
  processes, which inherit the environment, fail the very same masks and tests know which ones to expect.
- ``crash=P`` or ``crash=P@N``: a worker process (``process`` or ``ray`` backend; never the run's own process)
  SIGKILLs itself when it starts evaluating one of a seeded share P of masks, on that evaluation's first N (default
  1) attempts: what the OOM killer or a lost machine does to a worker. The backend retries the evaluation elsewhere
  (``--max-retries``); with N above that limit the evaluation ends as a failed record. Ray workers get the variable
  from the backend (``crash_environment``), since they are not children of the run.
- ``hang=P`` or ``hang=P@N``: the same selection, but the worker hangs (sleeps for ever) instead of dying: what a
  deadlocked CUDA call or a stalled network file system does. ``--eval-timeout`` finds it.
"""

from __future__ import annotations

import os
import signal
import time

from evo_sparse.foundations.seeds import derive

ENV = "EVO_SPARSE_FAULT"
FITNESS_FAULTS = ("fail", "nan", "oom")

_counts: dict[str, int] = {}  # per process: how many times each kill point was passed


def spec() -> dict[str, str]:
    """The parsed ``EVO_SPARSE_FAULT`` value: ``{"fail": "0.2", "kill-mid-journal": "3", ...}``."""
    items = (item.strip() for item in os.environ.get(ENV, "").split(","))
    return {key: value for key, _, value in (item.partition("=") for item in items if item)}


def _passed(point: str, target: int) -> bool:
    _counts[point] = _counts.get(point, 0) + 1
    return _counts[point] == target


def before_replace(name: str) -> None:
    """Called by the atomic write of the file ``name`` between its fsync'd temp file and ``os.replace``."""
    wanted = spec().get("kill-before-replace")
    if wanted:
        target, _, nth = wanted.partition("@")
        if target == name and _passed(f"replace:{name}", int(nth or 1)):
            kill()


def tear_journal_line() -> bool:
    """True when the journal line about to be written is the one to tear: write half of it, then call ``kill``."""
    nth = spec().get("kill-mid-journal")
    return bool(nth) and _passed("journal", int(nth))


def kill() -> None:
    """SIGKILL this process (no cleanup, no exit handlers: what a power cut or the OOM killer does)."""
    os.kill(os.getpid(), signal.SIGKILL)


def fitness_fault(seed: int, mask_text: str) -> str | None:
    """``"fail"``, ``"nan"``, ``"oom"`` or None for the mask ``mask_text`` of a run with ``seed``.

    The shares of the three kinds are disjoint slices of one uniform draw, so ``fail=0.2`` fails about 20% of masks.
    """
    found = spec()
    shares = [(kind, float(found[kind])) for kind in FITNESS_FAULTS if kind in found]
    if not shares:
        return None
    u = derive(seed, f"fault:{mask_text}") / 2**63
    for kind, share in shares:
        if u < share:
            return kind
        u -= share
    return None


def crash_worker(seed: int, mask_text: str, attempt: int) -> None:
    """Called by a backend's worker process before attempt ``attempt`` (0 = first) of an evaluation: SIGKILL this
    process when ``crash=P[@N]`` selects the mask (a pure function of run seed and mask) and ``attempt < N``; hang
    for ever when ``hang=P[@N]`` does."""
    for kind, act in (("crash", kill), ("hang", hang)):
        wanted = spec().get(kind)
        if wanted:
            share, _, attempts = wanted.partition("@")
            if attempt < int(attempts or 1) and crash_draw(seed, mask_text) < float(share):
                act()


def hang() -> None:
    """Never return: a worker stuck in a call that does not come back."""
    while True:
        time.sleep(3600)


def crash_draw(seed: int, mask_text: str) -> float:
    """The uniform draw in [0, 1) of ``crash=P``: the mask's evaluations crash their worker when it is below P."""
    return derive(seed, f"crash:{mask_text}") / 2**63


def crash_environment() -> dict[str, str]:
    """``{ENV: value}`` when ``EVO_SPARSE_FAULT`` is set here, else ``{}``: what a remote worker needs to see it."""
    value = os.environ.get(ENV)
    return {ENV: value} if value else {}
