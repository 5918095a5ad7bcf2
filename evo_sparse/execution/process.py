"""The ``process`` backend: spawned worker processes on this machine, one task at a time each.

A worker that dies (killed, out of memory) or hangs (past ``--eval-timeout``) costs only the task it was running:
that one is started again in a new worker process, at most ``max_retries`` times, after which its items get the
work's failed results (``Work.lost``); a record carries ``retries``, the number of restarts. Worker processes are
spawned, never forked (no inherited CUDA or OpenMP state), leave Ctrl-C and SIGTERM to the parent, and die with it
however it ends, SIGKILL included. (``multiprocessing.Pool``, used before, waits forever for a worker the OS killed.)
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from evo_sparse.execution.local import Map, finished, lost
from evo_sparse.execution.work import Task, Work, evaluation, portable, run_task, warm_up
from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.errors import ConfigError

# A worker process that found itself re-running the user's script (see ``refuse_while_bootstrapping``) exits with this
UNGUARDED_EXIT = 86
UNGUARDED = (
    "worker processes re-ran this script from its start (Python starts them by importing the main module): put the "
    'script\'s work under `if __name__ == "__main__":`, or pass backend="local" in the config'
)


def refuse_while_bootstrapping() -> None:
    """End this process at once (exit ``UNGUARDED_EXIT``, no traceback) when it is a spawned worker still importing the
    parent's main module: a script without an ``if __name__ == "__main__":`` guard re-runs its search there. The
    parent's ``ProcessMap`` turns that exit code into one line saying what to do, and records no failed evaluation."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        os._exit(UNGUARDED_EXIT)


# --- inside a worker process ------------------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """End this worker when the run's process ends in any way, SIGKILL included, so none keeps computing for nobody.

    Linux: the kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG); elsewhere a thread watches the parent.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        else:
            if os.getppid() != parent:  # it died before the call above
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _serve(conn, remote: tuple, parent: int, device: str) -> None:
    """A worker process: warm up (``Work.warm``), say ``("ready", None, None)``, then answer ``(positions, items,
    attempt)`` with ``("done", positions, results)`` or ``("error", positions, exception)`` until the parent sends None
    or goes away."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is SIGTERM (a scheduler signals every process of the job)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held back during start-up (``_sigint_held``)
    startup: BaseException | None = None
    try:
        warm_up(remote, device)  # now, so that data loading overlaps in all workers
    except Exception as exc:  # reported with the first task
        startup = portable(exc)
    with contextlib.suppress(OSError):
        conn.send(("ready", None, None))  # --eval-timeout counts from here, not from the start-up
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        positions, items, attempt = task
        try:
            if startup is not None:
                raise startup
            reply = ("done", positions, run_task(remote, device, items, attempt))
        except Exception as exc:
            reply = ("error", positions, portable(exc))
        conn.send(reply)


# --- the parent's side ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigint_held():
    """Hold SIGINT back (blocked, not ignored) while starting a worker. The worker inherits the block, so a Ctrl-C
    during its start-up stays pending there and is dropped when ``_serve`` ignores SIGINT and unblocks it; here it
    stays pending too and arrives as KeyboardInterrupt when the block ends, instead of being lost."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to hold
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Worker:
    """One spawned worker process and the parent's end of its pipe."""

    def __init__(self, ctx, remote: tuple, device: str):
        self.device = device
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, remote, os.getpid(), device), daemon=True)
        with _sigint_held():
            self.process.start()
        child.close()  # the parent keeps only its end, so a dead worker reads as EOF

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


EVAL_TIMEOUT_FACTOR, EVAL_TIMEOUT_FLOOR = 10, 60.0  # the automatic --eval-timeout: 10x the slowest, at least 60 s


def eval_limit(setting: float, slowest: float | None, cost: float = 1.0) -> float | None:
    """Seconds a task may run before its worker counts as hung: ``setting`` (``--eval-timeout``) when positive, else
    ``EVAL_TIMEOUT_FACTOR`` times the ``slowest`` task so far (seconds per unit of ``Work.cost``) times this task's
    ``cost``, at least ``EVAL_TIMEOUT_FLOOR``; None (no limit) while no task has finished."""
    if setting > 0:
        return setting
    return None if slowest is None else max(EVAL_TIMEOUT_FLOOR, EVAL_TIMEOUT_FACTOR * slowest * cost)


# How worker processes start: spawn, chosen by measurement and tests (benchmarks/start_methods.py). Under forkserver a
# worker's parent is the fork server, not the run, so it cannot die with the run (``_die_with_parent``: its workers
# exited at once there); preloading the main module into the fork server re-runs an unguarded script inside it, and
# without that preload a network a script registers never reaches the workers.
START_METHOD = "spawn"


class ProcessMap(Map):
    """``toolbox.map`` over spawned worker processes, one task (a pack) at a time each, results in input order.

    ``work`` is what the tasks are (default: the search's evaluations of ``cfg``); ``cfg`` gives ``--max-retries`` and
    ``--eval-timeout``. ``devices`` gives each worker's device (default: ``workers`` CPU workers). A worker that dies
    mid-task is replaced by a new process and its task sent again (to the first free worker), up to ``max_retries``
    (default ``cfg.max_retries``) times; after that its items get ``work.lost`` results. The other workers carry on
    undisturbed. A dead worker is replaced when next needed (``restarts`` counts them).
    """

    def __init__(
        self,
        cfg: RunConfig,
        workers: int = 0,
        *,
        devices: Iterable[str] = (),
        max_retries: int | None = None,
        work: Work | None = None,
        log: Callable[[str], None] = lambda _: None,
    ):
        self.cfg = cfg
        self.work = work or evaluation(cfg)
        self.devices = tuple(devices) or ("cpu",) * workers
        if not self.devices:
            raise ValueError("ProcessMap needs at least one worker")
        self.workers = len(self.devices)
        self.max_retries = cfg.max_retries if max_retries is None else max_retries
        self.log = log
        self.restarts = 0  # workers replaced after dying
        self.slowest: float | None = None  # seconds per unit of cost of the slowest task so far (``eval_limit``)
        self._ctx = multiprocessing.get_context(START_METHOD)
        self._slots = [_Worker(self._ctx, self.work.remote, d) for d in self.devices]

    def pids(self) -> list[int]:
        """The worker processes' pids (tests kill them)."""
        return [w.process.pid for w in self._slots]

    def close(self) -> None:
        for w in self._slots:
            w.stop()

    def _replace(self, slot: int) -> None:
        self._slots[slot].stop()
        self._slots[slot] = _Worker(self._ctx, self.work.remote, self.devices[slot])
        self.restarts += 1

    def _run(self, todo: collections.deque[Task]) -> Iterator[tuple[int, Any]]:
        busy: dict[int, Task] = {}  # slot -> the task its worker is running
        started: dict[int, float] = {}  # slot -> when its task was sent
        costs: dict[int, float] = {}  # slot -> its task's cost (``Work.cost``)
        try:
            while todo or busy:
                for slot, w in enumerate(self._slots):
                    if todo and slot not in busy:
                        if not w.process.is_alive():  # died while idle: nothing to retry
                            self._replace(slot)
                        busy[slot] = todo.popleft()
                        started[slot] = time.monotonic()
                        costs[slot] = self.work.task_cost(busy[slot][1])
                        with contextlib.suppress(OSError):  # a worker dead by now reads as EOF below
                            self._slots[slot].conn.send(busy[slot])
                limits = {s: eval_limit(self.cfg.eval_timeout, self.slowest, costs[s]) for s in busy}
                ends = [started[s] + limit for s, limit in limits.items() if limit is not None]
                timeout = max(0.0, min(ends) - time.monotonic()) if ends else None
                ready = wait(
                    [self._slots[s].conn for s in busy] + [self._slots[s].process.sentinel for s in busy], timeout
                )
                now = time.monotonic()
                for slot in list(busy):
                    w, limit = self._slots[slot], limits[slot]
                    if w.conn not in ready and w.process.sentinel not in ready:
                        if limit is not None and now - started[slot] >= limit:  # hung: kill it, then as if it died
                            w.process.kill()
                            yield from self._lost(slot, busy.pop(slot), todo, hung=(now - started[slot], limit))
                        continue
                    try:
                        if not w.conn.poll():  # the process ended without a last word
                            raise EOFError
                        kind, positions, payload = w.conn.recv()
                    except (EOFError, OSError):
                        yield from self._lost(slot, busy.pop(slot), todo)
                        continue
                    if kind == "ready":  # a new worker has started up: its task's time starts now
                        started[slot] = now
                        continue
                    attempt = busy.pop(slot)[2]
                    self.slowest = max(self.slowest or 0.0, (now - started[slot]) / max(costs[slot], 1e-12))
                    if kind == "error":
                        raise payload
                    yield from finished(positions, payload, attempt)
        finally:
            for slot in busy:  # abandoned (Ctrl-C, an error): its answer must not be taken for the next task's
                self._slots[slot].stop()  # replaced when next needed

    def _lost(
        self, slot: int, task: Task, todo: collections.deque[Task], hung: tuple[float, float] | None = None
    ) -> Iterator[tuple[int, Any]]:
        """The worker of ``slot`` died running ``task`` (or was killed after ``hung`` = (seconds it ran, limit)):
        replace it; retry the task, or give its failed results."""
        positions, items, attempt = task
        w = self._slots[slot]
        w.process.join(1)
        if w.process.exitcode == UNGUARDED_EXIT:
            raise ConfigError(UNGUARDED)
        how = _how_it_ended(w.process.exitcode)
        if hung:
            how = f"gave no answer for {hung[0]:.0f} s (--eval-timeout {hung[1]:g} s) and was killed as hung"
        what = f"worker process {w.process.pid} ({w.device}) {how} during {_a(self.work.noun)}"
        w.stop()  # replaced when next needed
        if attempt < self.max_retries:
            self.log(f"{what}; it is retried in a new worker ({attempt + 1} of at most {self.max_retries} retries)")
            todo.appendleft((positions, items, attempt + 1))
            return
        reason = f"{what}, {attempt + 1} time(s): its worker died at every attempt (--max-retries {self.max_retries})"
        self.log(f"{what}; no retries left (--max-retries {self.max_retries}): recorded as failed")
        yield from lost(self.work, task, reason)


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun
