"""Where fitness evaluations run: in this process, or over spawned CPU worker processes.

Both plug into DEAP as ``toolbox.map`` and return records in input order. A fitness value depends only on
(config, seed, mask): on the CPU every evaluation runs with ``CPU_THREADS`` intra-op threads wherever it runs
(thread count changes float summation order, hence results), and each worker builds the very same ``Evaluator``
from the run's config. Worker processes are spawned, never forked, so CUDA and OpenMP state is never inherited.
Workers leave Ctrl-C to the parent (which stops the pool) and die with it however it ends, SIGKILL included.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from evo_sparse.config import RunConfig

CPU_THREADS = 1  # per evaluation: deterministic, and immune to oversubscribed cores; parallelism comes from workers

_worker: dict[str, Any] = {}


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(cfg: RunConfig, device_type: str) -> int:
    """Worker processes for this run: 0 (evaluate in this process) on CUDA, else ``cfg.workers`` or one per core."""
    if device_type != "cpu":
        return 0
    n = cfg.workers or cpu_cores()
    return 0 if n <= 1 else n


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


def _init_worker(cfg_dict: dict[str, Any], parent: int) -> None:
    import torch

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool cleanly

    from evo_sparse.fitness import Evaluator
    from evo_sparse.runs import load_splits

    torch.set_num_threads(CPU_THREADS)
    cfg = RunConfig.from_dict(cfg_dict)
    _worker["evaluate"] = Evaluator(cfg, load_splits(cfg, log=lambda _: None), "cpu")


def _evaluate(genome: list[int]) -> dict[str, Any]:
    return _worker["evaluate"](genome)


def _evaluate_at(item: tuple[int, list[int]]) -> tuple[int, dict[str, Any]]:
    position, genome = item
    return position, _worker["evaluate"](genome)


class ProcessMap:
    """``toolbox.map`` over ``workers`` spawned processes, one evaluation at a time each, results in input order."""

    def __init__(self, cfg: RunConfig, workers: int):
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")
        try:  # workers inherit an ignored SIGINT, so a Ctrl-C while they start up does not reach them either
            handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread: they ignore it once their initializer runs
            handler = None
        try:
            self.pool = ctx.Pool(workers, initializer=_init_worker, initargs=(cfg.to_dict(), os.getpid()))
        finally:
            if handler is not None:
                signal.signal(signal.SIGINT, handler)

    def __call__(self, func: Callable, individuals: Iterable) -> Iterable[dict[str, Any]]:
        """Evaluate ``individuals`` in order; ``func`` (the toolbox's evaluate) is ignored: workers hold their own."""
        return self.pool.imap(_evaluate, [list(ind) for ind in individuals], chunksize=1)

    def unordered(self, individuals: Iterable) -> Iterator[tuple[int, dict[str, Any]]]:
        """Evaluate ``individuals``, yielding ``(position, record)`` as each evaluation finishes."""
        genomes = [(i, list(ind)) for i, ind in enumerate(individuals)]
        return self.pool.imap_unordered(_evaluate_at, genomes, chunksize=1)

    def evaluate(self, genome) -> dict[str, Any]:
        """The same evaluation, run in a worker (one at a time: use the map for a population)."""
        return self.pool.apply(_evaluate, (list(genome),))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
