"""A run's evaluations file (``evaluations.jsonl``): one row per evaluation, appended as soon as it finishes; the
fitness cache it makes; the budget of trainings it counts.

A row is the evaluation's record plus where it sits (``gen``, ``index``), its ``mask``, how it went (``retries``)
and what it cost: ``cost`` in trainings (a brief training of the run's ``--train-images`` is 1, one of another length
asked by an ask/tell plug-in, ``fidelity`` images, its share). Fitness is a pure function of (settings, seed, mask,
length), so a mask the run has scored before is not trained again: its row copies the record with ``cache: "run"``
and costs nothing. A mask another run of the same fitness settings and seed scored (``shared_scores``: GA and
Weedout runs of one seed share generation 0) is not trained again either: its row says ``cache: "shared"`` and
``cached_from`` where, and it costs what the training would have cost, so that the algorithm's budget stays its own.
The budget (``--budget``) is spent in the order the loop asks; an individual it cannot pay for is left unevaluated
(the map yields None), which ends the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import RunConfig, pack_size
from evo_sparse.foundations.errors import AlgorithmError, EvoSparseError, FailedEvaluationsError, RunStateError
from evo_sparse.foundations.paths import CONFIG, RunPaths, seed_folder
from evo_sparse.foundations.storage import SCHEMA_VERSION, append_jsonl, read_json, read_jsonl
from evo_sparse.models.masks import ENCODING_PREFIX, Layout, Mask
from evo_sparse.runs import checkpoint
from evo_sparse.training.records import OK, STATUSES

# journal row fields that are not the evaluation's record: where it sits, how it went (``retries``: times its worker
# died and it was started again, see ``backends``) and what it cost, which must not make results differ between
# backends or between a training and a cache hit
ROW_META = ("schema", "gen", "index", "retries", "mask", "reused", "cost", "cache", "fidelity", "cached_from")
_EPSILON = 1e-9  # costs are shares of a training: sums of them are compared with this slack


def cost(row: dict[str, Any]) -> float:
    """What a row cost, in trainings (rows written before costs were recorded: 1)."""
    return float(row.get("cost", 1.0))


def trainings(rows: list[dict[str, Any]]) -> float:
    """The trainings a journal's rows spent (cache hits cost none)."""
    return sum(cost(r) for r in rows)


class Journal:
    """The evaluations file of one run: rows, the fitness cache and the budget.

    Rows after the checkpoint's count (``checkpointed``) belong to the generation that was running when the run
    stopped; they are reused when the same individual (same generation, position, mask and length) comes up again, and
    never written twice. ``strict``: such a row holding another mask is an AlgorithmError (an ask/tell plug-in replayed
    on resume must propose what it proposed before). With worker processes rows are written in the order evaluations
    finish, so a kill loses no finished evaluation.
    """

    def __init__(
        self,
        path: Path,
        layout: Layout,
        checkpointed: int,
        *,
        train_images: int = 0,
        batch_size: int = 1,
        budget: float | None = None,
        strict: str | None = None,
    ):
        self.path, self.layout, self.gen = path, layout, 0
        self.train_images, self.batch_size, self.budget, self.strict = train_images, batch_size, budget, strict
        self.on_row: Callable[[int, dict[str, Any]], None] = lambda step, row: None  # (its line, from 0; the row)
        rows = read_jsonl(path)
        prefix = f"{ENCODING_PREFIX}{layout.fingerprint()}:"
        for n, row in enumerate(rows, start=1):
            checkpoint.check_schema(row.get("schema"), path, f"line {n} of the journal")
            if not (
                isinstance(row.get("gen"), int)
                and isinstance(row.get("index"), int)
                and str(row.get("mask")).startswith(prefix)
                and row.get("status") in STATUSES
            ):
                raise RunStateError(
                    f"journal {path} line {n} is not an evaluation of this run's network; restore the journal "
                    "or delete the run folder"
                )
        if len(rows) < checkpointed:
            raise RunStateError(
                f"journal {path} holds {len(rows)} evaluations but the checkpoint counts {checkpointed}: it was cut "
                "short or replaced; restore it or delete the run folder"
            )
        self.rows = len(rows)
        self.failed = [row.get("reason") for row in rows if row["status"] != OK]
        self.pending = {(r["gen"], r["index"]): r for r in rows[checkpointed:]}
        self.used = trainings(rows[:checkpointed])  # the budget the restored state has spent
        self.cache: dict[tuple[str, int | None], dict[str, Any]] = {}
        self.shared: dict[tuple[str, int | None], dict[str, Any]] = {}  # another run's scores (``share``)
        for row in rows:
            if row["status"] == OK:
                self.cache.setdefault((row["mask"], row.get("fidelity")), row)

    def budget_left(self) -> float | None:
        """Trainings the budget still allows (None: no budget)."""
        return None if self.budget is None else self.budget - self.used

    def append(self, index: int, record: dict[str, Any]) -> dict[str, Any]:
        row = {"schema": SCHEMA_VERSION, "gen": self.gen, "index": index, "retries": 0} | record
        append_jsonl(self.path, [row])
        self.on_row(self.rows, row)
        self.rows += 1
        if row.get("status") != OK:
            self.failed.append(row.get("reason"))
        elif row.get("cache") != "run":
            self.cache.setdefault((row["mask"], row.get("fidelity")), row)
        return row

    def _cost_of(self, fidelity: int | None) -> float:
        """A training's cost: the images it trains (whole batches) over the images of the run's own training."""
        if fidelity is None or not self.train_images:
            return 1.0
        b = self.batch_size
        return (fidelity // b * b) / (self.train_images // b * b)

    def wrap(self, inner_map: Callable, unordered: Callable | None = None) -> Callable:
        """A ``toolbox.map`` that takes pending rows first, answers masks scored before from the cache, evaluates
        the rest that the budget pays for with ``inner_map`` and journals each result; it yields in input order, None
        for an individual the budget left unevaluated. ``unordered(individuals, positions)``, when given, yields
        ``(j, record)`` as evaluations finish, so each is journaled at once."""

        def journaled_map(func, individuals) -> Iterator[dict[str, Any] | None]:
            keys = [(Mask(self.layout, tuple(ind)).encode(), getattr(ind, "images", None)) for ind in individuals]
            ready: dict[int, dict[str, Any] | None] = {}
            first: dict[tuple[str, int | None], int] = {}  # a key trained in this call -> its position
            copies: dict[int, list[int]] = {}  # that position -> later positions of the same key
            todo: list[int] = []
            planned, cut = 0.0, False
            for i, key in enumerate(keys):
                row = self.pending.get((self.gen, i))
                if row is not None and (row["mask"], row.get("fidelity")) == key:
                    ready[i], planned = dict(row, reused=True), planned + cost(row)
                    continue
                if row is not None and self.strict:
                    raise AlgorithmError(
                        f"algorithm {self.strict} proposed another mask on resume than it did before (ask "
                        f"{self.gen + 1}, proposal {i + 1}): it must draw its randomness from toolbox.rng; delete the "
                        "run folder to start it again"
                    )
                price = self._cost_of(key[1])
                if cut:
                    ready[i] = None
                elif key in self.cache:
                    ready[i] = self.append(i, self._hit(self.cache[key], key))
                elif key in first:
                    copies.setdefault(first[key], []).append(i)
                elif self.budget is not None and self.used + planned + price > self.budget + _EPSILON:
                    cut, ready[i] = True, None
                elif key in self.shared:  # scored by another run: not trained, but paid for
                    planned += price
                    shared = self._hit(self.shared[key], key, "shared") | {"cost": price}
                    ready[i] = self.append(i, shared | {"cached_from": self.shared[key]["cached_from"]})
                else:
                    first[key], planned = i, planned + price
                    todo.append(i)
            for i in [c for cs in copies.values() for c in cs]:
                ready.setdefault(i, None)  # filled when the first of its key finishes
            self.used += planned
            subset = [individuals[i] for i in todo]
            finished = unordered(subset, todo) if unordered else enumerate(inner_map(func, subset))
            nxt = 0
            for j, record in finished:
                i = todo[j]
                fidelity = keys[i][1]
                extra = {"cost": self._cost_of(fidelity)} | ({"fidelity": fidelity} if fidelity is not None else {})
                ready[i] = self.append(i, dict(record, mask=keys[i][0]) | extra)
                for c in copies.get(i, []):
                    ready[c] = self.append(c, self._hit(ready[i], keys[c]))
                while nxt in ready and (ready[nxt] is not None or not _waiting(nxt, copies)):
                    yield ready.pop(nxt)
                    nxt += 1
            while nxt < len(keys):
                yield ready.pop(nxt, None)
                nxt += 1

        return journaled_map

    def share(self, scores: dict[tuple[str, int | None], dict[str, Any]]) -> None:
        """Use ``shared_scores`` of other runs: their masks are not trained again (they still cost their budget)."""
        self.shared = scores

    @staticmethod
    def _hit(row: dict[str, Any], key: tuple[str, int | None], where: str = "run") -> dict[str, Any]:
        """A cache hit's row: the record scored before, costing nothing (a shared one: see ``wrap``)."""
        record = {k: v for k, v in row.items() if k not in ROW_META}
        extra = {"fidelity": key[1]} if key[1] is not None else {}
        return record | {"mask": key[0], "seconds": 0.0, "cost": 0.0, "cache": where} | extra

    @staticmethod
    def kept(row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(the record as individuals keep it, whether it cost no training now: reused from an earlier start, or a
        cache hit) of a ``wrap`` result."""
        return {k: v for k, v in row.items() if k not in ROW_META}, bool(row.get("reused") or row.get("cache"))

    def check_failures(self, limit: float) -> None:
        """FailedEvaluationsError when more than the share ``limit`` of all evaluations so far failed."""
        if self.rows and len(self.failed) / self.rows > limit:
            raise FailedEvaluationsError(self.failure_summary(limit))

    def failure_summary(self, limit: float) -> str:
        share = len(self.failed) / self.rows
        return (
            f"{len(self.failed)} of {self.rows} evaluations failed ({share:.0%}), more than --max-failed-share "
            f"{limit:g} (last reason: {self.failed[-1]}); every reason is in {self.path}. Fix the cause, or allow more "
            "with --max-failed-share, and run the same command to resume"
        )


def _waiting(position: int, copies: dict[int, list[int]]) -> bool:
    """True when ``position`` copies a key still being trained (its row comes when that training finishes)."""
    return any(position in cs for cs in copies.values())


def shared_scores(cfg: RunConfig, here: Path) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The successful trainings of the other runs under ``cfg.runs_dir`` with the same seed and the same fitness
    settings (data, network, brief training), by (mask, training length), each with ``cached_from`` (its folder,
    relative to the runs folder). Empty with ``--pack`` > 1 (a value there depends on its slot in the pack). Folders
    that cannot be read are skipped: sharing saves time, it is never needed."""
    if pack_size(cfg) > 1:
        return {}
    wanted = _fitness_settings(cfg)
    root = Path(cfg.runs_dir)
    out: dict[tuple[str, int | None], dict[str, Any]] = {}
    for config in sorted(root.glob(f"*/{seed_folder(cfg.seed)}/{CONFIG}")):
        folder = config.parent
        if folder.resolve() == here.resolve():
            continue
        try:
            other = RunConfig.from_dict(read_json(config, "run config"))
            if _fitness_settings(other) != wanted:
                continue
            rows = read_jsonl(RunPaths(folder).evaluations, repair=False)
        except (EvoSparseError, TypeError, ValueError, OSError):
            continue
        where = str(folder.relative_to(root))
        for row in rows:
            if row.get("status") == OK and row.get("cache") is None and isinstance(row.get("mask"), str):
                out.setdefault((row["mask"], row.get("fidelity")), dict(row, cached_from=where))
    return out


def _fitness_settings(cfg: RunConfig) -> dict[str, Any]:
    """What a fitness value is a function of, besides the mask: the seed and the data, network and brief training."""
    items = cfg.computed_items()
    return {k: v for k, v in items.items() if k == "seed" or k.split(".")[0] in ("data", "model", "train")}
