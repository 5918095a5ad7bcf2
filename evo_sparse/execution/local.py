"""What every backend's map shares, and the ``local`` backend: tasks run in this process, one after another.

A map plugs into DEAP as ``toolbox.map`` and yields results in input order; ``unordered`` yields ``(position,
result)`` as tasks finish, so the caller can save each one at once. A task is a pack: the items at ``Work.pack``
consecutive places of the input, run together (the search: ``--pack`` individuals trained together); an item's slot
in its pack is the one its place gives, however many of its pack are left to run.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from evo_sparse.execution.work import Task, Work


def in_order(finished: Iterable[tuple[int, Any]]) -> Iterator[Any]:
    """Results of ``(position, result)`` pairs arriving in any order, yielded in position order as soon as possible."""
    waiting: dict[int, Any] = {}
    nxt = 0
    for position, result in finished:
        waiting[position] = result
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1


def with_retries(record: dict[str, Any], attempt: int) -> dict[str, Any]:
    """``record`` (every work's result is a record) with ``retries``: the times its worker died and it was restarted."""
    return dict(record, retries=attempt) if attempt else record


def finished(positions: list[int | None], results: list, attempt: int) -> Iterator[tuple[int, Any]]:
    """``(position, result)`` for the filled slots of a finished task."""
    for position, result in zip(positions, results, strict=True):
        if position is not None:
            yield position, with_retries(result, attempt)


def lost(work: Work, task: Task, reason: str) -> Iterator[tuple[int, Any]]:
    """``(position, work.lost result)`` for each item of a task whose worker died at every attempt."""
    positions, items, attempt = task
    return finished(positions, work.lost_results(items, reason), attempt)


class Map:
    """What every backend shares: ``toolbox.map`` in input order over ``unordered``, built on ``_run``, which takes
    tasks of ``work.pack`` consecutive items."""

    work: Work

    @property
    def pack(self) -> int:
        return self.work.pack

    def __call__(self, func: Callable, individuals: Iterable) -> Iterator[Any]:
        """Run ``individuals`` in order; ``func`` (the toolbox's evaluate) is ignored: workers hold their own."""
        return in_order(self.unordered(individuals))

    def unordered(self, individuals: Iterable, positions: Iterable[int] | None = None) -> Iterator[tuple[int, Any]]:
        """Run ``individuals``, yielding ``(j, result)`` as each finishes, ``j`` indexing ``individuals``.
        ``positions`` (default 0, 1, ...) are their places in the generation: the one at position ``p`` runs in pack
        ``p // pack`` at slot ``p % pack`` however many of its pack are left to run."""
        items = [self.work.prepare(ind) for ind in individuals]
        k = self.pack
        packs: dict[int, list[int | None]] = {}
        for j, p in enumerate(range(len(items)) if positions is None else positions):
            packs.setdefault(p // k, [None] * k)[p % k] = j
        tasks = [(slots, [None if j is None else items[j] for j in slots], 0) for slots in packs.values()]
        return self._run(collections.deque(tasks))

    def evaluate(self, genome) -> Any:
        """The same evaluation, run by the backend (one at a time: use the map for a population)."""
        ((_, result),) = list(self.unordered([genome]))
        return result

    def _run(self, todo: collections.deque[Task]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalMap(Map):
    """``toolbox.map`` in this process: ``run(items)`` a pack at a time (the search: an ``Evaluator``'s
    ``evaluate_genomes``)."""

    def __init__(self, run: Callable[[list], list], work: Work):
        self.run, self.work = run, work

    def _run(self, todo: collections.deque[Task]) -> Iterator[tuple[int, Any]]:
        while todo:
            positions, items, _ = todo.popleft()
            yield from finished(positions, self.run(items), 0)
