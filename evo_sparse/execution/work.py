"""What a backend's workers run. A ``Work`` names its worker function by import path (``"package.module:function"``),
so the backends run any kind of task, the search's fitness evaluations (``evaluation``) or a study's final trainings,
without importing the layer that defines it: the worker imports it by name.

Inside a worker, a search evaluation runs on the worker's own ``Evaluator``, built from the run's config at the first
task and kept (``evaluator``). On the CPU every evaluation runs with ``CPU_THREADS`` intra-op threads wherever it runs
(thread count changes float summation order, hence results), so a fitness value depends only on (config, seed, mask).
"""

from __future__ import annotations

import functools
import importlib
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evo_sparse.foundations import faults
from evo_sparse.foundations.config import RunConfig, pack_size
from evo_sparse.foundations.devices import CPU_THREADS
from evo_sparse.foundations.errors import EvoSparseError

# (index in the map's input per slot of the pack, the item per slot, attempt: 0 first, then retries); None: empty slot
Task = tuple[list[int | None], list[Any], int]


def _same(item: Any) -> Any:
    return item


@dataclass(frozen=True)
class Work:
    """A kind of task a backend runs, a pack of ``pack`` items at a time.

    What travels to a worker (``remote``; picklable): ``call``, a ``"module:function"`` the worker imports and runs as
    ``function(*args, device, items, attempt)``, returning one result per item (``items`` holds None in a pack's
    empty slots; ``attempt`` is 0 first, then the retry's number, and None when the local backend runs it in the
    run's own process, where test fault hooks stay off); ``warm``, when given, runs as ``function(*args, device)``
    when a worker process starts, so its set-up (data loading) overlaps in all workers (on Ray: before every task, so
    it must be cheap when repeated). What stays in the parent: ``prepare`` turns an input into a picklable item,
    ``lost(item, reason)`` is the result of an item whose worker died at every attempt, ``cost(item)`` weighs a
    task's expected time for the automatic hung-worker limit (default 1 per task), and ``noun`` names a task in
    messages.
    """

    call: str
    lost: Callable[[Any, str], Any]
    args: tuple = ()
    warm: str | None = None
    pack: int = 1
    prepare: Callable[[Any], Any] = _same
    cost: Callable[[Any], float] | None = None
    noun: str = "evaluation"

    @property
    def remote(self) -> tuple[str, tuple, str | None]:
        """(call, args, warm): all a worker needs of this work."""
        return self.call, self.args, self.warm

    def task_cost(self, items: list[Any]) -> float:
        """The expected time of a task of ``items``, in the units of ``cost`` (1 per task without one)."""
        return 1.0 if self.cost is None else sum(self.cost(i) for i in items if i is not None)

    def lost_results(self, items: list[Any], reason: str) -> list[Any]:
        """``lost`` of each filled slot of a task that never finished (None in its empty slots)."""
        return [None if item is None else self.lost(item, reason) for item in items]


def resolve(path: str) -> Callable:
    """The function a ``"module:function"`` path names, imported."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def warm_up(remote: tuple[str, tuple, str | None], device: str) -> None:
    """Run a ``Work.remote``'s ``warm`` function on ``device``, if it has one."""
    _, args, warm = remote
    if warm:
        resolve(warm)(*args, device)


def run_task(remote: tuple[str, tuple, str | None], device: str, items: list[Any], attempt: int | None) -> list[Any]:
    """Run a ``Work.remote``'s ``call`` on a task's ``items``: its results, one per item."""
    call, args, _ = remote
    return resolve(call)(*args, device, items, attempt)


def portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it is one of evo-sparse's errors (the parent shows it in one line), else a RuntimeError
    carrying the worker's traceback (a bug: the parent raises it with that traceback)."""
    if isinstance(exc, EvoSparseError):
        return exc
    return RuntimeError("in a worker process:\n" + "".join(traceback.format_exception(exc)))


# --- the search's work: fitness evaluations of genomes ---------------------------------------------------------------


def evaluation(cfg: RunConfig) -> Work:
    """The search's work for ``cfg``: a pack (``--pack``) of genomes evaluated by a worker's ``Evaluator``, its data
    loaded from this machine's cache; a genome whose worker always died gets ``fitness.lost_record``."""
    return Work(
        call=f"{__name__}:evaluate_genomes",
        args=(cfg.to_dict(),),
        warm=f"{__name__}:evaluator",
        pack=pack_size(cfg),
        prepare=_item,
        lost=functools.partial(_lost_evaluation, cfg),
    )


def _item(individual) -> list[int] | tuple[list[int], int]:
    """A DEAP individual as a plain list of bits, paired with its training length when it asks for its own."""
    images = getattr(individual, "images", None)
    return list(individual) if images is None else (list(individual), images)


def _lost_evaluation(cfg: RunConfig, item, reason: str):
    from evo_sparse.training.fitness import lost_record, split_item

    return lost_record(cfg, split_item(item)[0], reason)


_worker: dict[str, Any] = {}


def evaluator(cfg_dict: dict[str, Any], device: str, splits: Callable | None = None):
    """This worker's ``Evaluator`` for (config, device), built at the first call and kept; ``splits()`` gives the
    data (default: loaded from the config, i.e. from this machine's cache)."""
    key = (json.dumps(cfg_dict, sort_keys=True), device)
    if _worker.get("key") != key:
        import torch

        from evo_sparse.training.data import load_splits
        from evo_sparse.training.fitness import Evaluator

        _worker.clear()
        torch.set_num_threads(CPU_THREADS)
        cfg = RunConfig.from_dict(cfg_dict)
        data = splits() if splits else load_splits(cfg, log=lambda _: None)
        _worker.update(key=key, seed=cfg.seed, evaluate=Evaluator(cfg, data, device))
    return _worker["evaluate"]


def evaluate_genomes(cfg_dict, device: str, genomes: list[list[int]], attempt: int | None, splits=None) -> list[dict]:
    """A worker's task of the search: ``evaluator(...).evaluate_genomes(genomes)``. ``EVO_SPARSE_FAULT``'s crash=
    and hang= (a test hook) act first, in a worker only."""
    evaluate = evaluator(cfg_dict, device, splits)
    if attempt is not None and faults.spec():
        from evo_sparse.models.masks import Mask
        from evo_sparse.training.fitness import split_item

        for item in filter(None, genomes):
            faults.crash_worker(_worker["seed"], Mask(evaluate.layout, tuple(split_item(item)[0])).encode(), attempt)
    return evaluate.evaluate_genomes(genomes)
