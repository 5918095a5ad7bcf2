"""Final training: the masks a search found, as many fresh random masks of the same sparsity, and the dense parent,
each fully trained with one recipe (``FinalConfig``) from the parent's initial weights.

Every network is the compacted sub-network ``fitness.Evaluator.build`` makes (the same parent weights the search
scored), trained over whole epochs of the training split and measured on the validation split after every epoch and on
the test split at the end. Its early fitness comes from the very same ``Evaluator`` (found masks: the search already
recorded it), and ``early_fitness_heldout`` is the same mask's fitness under a replicate the search never saw
(``heldout_replicate``): free of the winner's curse that selection puts on the search's values. A training seed varies
only the data order and augmentation; masks and initial weights stay, and every network under one training seed sees
the same batches. One JSON file per network and seed, written atomically and skipped when present (a file written before
``early_fitness_heldout`` existed lacks it: read it as None), names spelled once, here:

- ``<run>/final_<recipe hash>/final.json``: the recipe (``FinalConfig``).
- ``<run>/final_<recipe hash>/<kind>_<index>_seed<training seed>.json``: one network (kind ``found`` or ``random``).
- ``<runs_dir>/dense_<hash>/seed_<seed>/``: the dense parent's folder (``config.json`` and a ``final_<hash>/`` of the
  same form holding ``dense_0_seed<t>.json``), shared by every run with the same network, data, brief training and seed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evo_sparse.foundations.config import (
    FinalConfig,
    RunConfig,
    SearchConfig,
    train_split_size,
)
from evo_sparse.foundations.errors import ConfigError, RunStateError
from evo_sparse.foundations.paths import RunPaths, dense_folder, final_folder, final_folders, result_files, result_name
from evo_sparse.foundations.seeds import derive
from evo_sparse.foundations.storage import SCHEMA_VERSION, read_json, read_jsonl, write_json
from evo_sparse.models.masks import Mask, sample
from evo_sparse.runs.journal import Journal
from evo_sparse.study.final_network import heldout_replicate, lost_record, train_network

KINDS = ("found", "random", "dense")


@dataclass(frozen=True)
class Job:
    """One network under one training seed, and where its result goes."""

    cfg: RunConfig  # the run's config (its seed, network, data and brief training)
    final: FinalConfig
    kind: str
    index: int
    train_seed: int
    mask: str  # encoded (``Mask.encode``)
    sparsity: float  # the run's nominal sparsity; 0 for the dense parent
    early: dict[str, Any] | None  # the search's fitness record; None: compute it with the Evaluator
    path: Path
    source: str  # the run folder (or dense folder) the network comes from

    @property
    def seed_label(self) -> str:
        return f"seed {self.cfg.seed} train-seed {self.train_seed}"

    @property
    def images(self) -> int:
        """Training images this job will process (its share of a progress estimate)."""
        return job_images(self.cfg, self.final, early_known=bool(self.early))

    @property
    def work(self) -> float:
        """Its share of a progress estimate: ``images`` times the network's cost per image (``training_cost``)."""
        from evo_sparse.runs.run import layout_of

        return self.images * training_cost(self.cfg, Mask.decode(layout_of(self.cfg), self.mask).widths())


def job_images(cfg: RunConfig, fc: FinalConfig, *, early_known: bool) -> int:
    """Training images of one final training of ``cfg``'s network by ``fc``: its epochs, the brief trainings of its
    early fitness unless the search ``early_known`` it (a found mask), and the held-out replicate's."""
    per_epoch = train_split_size(cfg) // fc.batch_size * fc.batch_size
    brief = cfg.train.train_images  # one brief training: one replicate of a fitness
    early = 0 if early_known else cfg.train.replicates * brief
    return fc.epochs * per_epoch + early + brief


# Per training image, what a network costs beyond its multiply-accumulates (data, optimizer, Python), in MACs:
# measured on the 2-core CPU, one thread, WRN-16-2 (dense 101M MACs: 105 images/s; 0.9 sparsity 1M MACs: 1,150).
OVERHEAD_MACS = 9e6


def training_cost(cfg: RunConfig, widths: dict[str, int] | None) -> float:
    """Relative cost of one training image of ``cfg``'s network at ``widths`` (None: dense), for ETAs."""
    from evo_sparse.models.registry import architecture

    return architecture(cfg.model).cost(widths)[1] + OVERHEAD_MACS


# --- folders -------------------------------------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """(config, checkpoint) of a finished run, both checked; RunStateError otherwise."""
    from evo_sparse.runs import checkpoint
    from evo_sparse.runs.run import layout_of, read_config

    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise RunStateError(f"{run_dir} is not a run folder (no config.json); give the folder `evo-sparse run` printed")
    cfg = read_config(paths.config)
    ckpt = checkpoint.read(paths.checkpoint, cfg, layout_of(cfg)) if paths.checkpoint.exists() else None
    if ckpt is None or not checkpoint.finished(ckpt, cfg):
        raise RunStateError(f"run {run_dir} is unfinished; run the same `evo-sparse run` command to finish it first")
    return cfg, ckpt


# --- jobs ----------------------------------------------------------------------------------------------------------


def run_jobs(run_dir: str | Path, final: FinalConfig, *, dense: bool = True) -> list[Job]:
    """Jobs for a finished run: its best K masks, K random masks of the same sparsity, and (``dense``) the parent."""
    from evo_sparse.runs.run import layout_of

    cfg, ckpt = load_run(run_dir)
    final.validate()
    check_batch_size(cfg, final)
    layout = layout_of(cfg)
    found = found_masks(run_dir, ckpt, final.masks or cfg.search.survivors)
    if not found:
        raise RunStateError(f"run {run_dir} found no mask whose evaluation succeeded; nothing to train")
    folder = final_folder(Path(run_dir), final)
    jobs = []
    for i, entry in enumerate(found):
        jobs += _seeded(cfg, final, "found", i, entry["mask"], cfg.search.sparsity, entry["record"], folder, run_dir)
    for i in range(len(found)):
        rng = random.Random(derive(cfg.seed, f"final-random:{i}"))
        mask = Mask(layout, tuple(sample(layout, cfg.search.sparsity, cfg.search.sampling, rng))).encode()
        jobs += _seeded(cfg, final, "random", i, mask, cfg.search.sparsity, None, folder, run_dir)
    if dense:
        jobs += dense_jobs(cfg, Path(run_dir).parent.parent, final)
    return jobs


def found_masks(run_dir: str | Path, ckpt: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """A finished run's best ``k`` masks as ``{"mask", "record"}``, best first: its hall of fame (``--keep`` masks),
    then, when ``k`` asks for more, the next best masks its journal scored at the run's own training length (each
    mask once; a cut budget's run never scored past its budget). Failed evaluations are never among them."""
    found = [e for e in ckpt["hall_of_fame"] if e["record"].get("status") == "ok"][:k]
    if len(found) < k:
        seen = {e["mask"] for e in found}
        rows = [
            r
            for r in read_jsonl(RunPaths(Path(run_dir)).evaluations, repair=False)
            if r.get("status") == "ok" and r.get("fidelity") is None
        ]
        for row in sorted(rows, key=lambda r: -r["fitness"]):  # stable: of equal fitness, the first scored first
            if len(found) < k and row["mask"] not in seen:
                seen.add(row["mask"])
                found.append({"mask": row["mask"], "record": Journal.kept(row)[0]})
    return found


def dense_jobs(cfg: RunConfig, runs_dir: Path, final: FinalConfig) -> list[Job]:
    """Jobs for the dense parent of ``cfg`` (its seed, network, data and brief training) under every training seed."""
    from evo_sparse.runs.run import layout_of

    final.validate()
    check_batch_size(cfg, final)
    root = dense_folder(cfg, runs_dir)
    net = dataclasses.replace(cfg, search=SearchConfig())
    mask = Mask(layout_of(cfg), (1,) * layout_of(cfg).size).encode()
    return _seeded(net, final, "dense", 0, mask, 0.0, None, final_folder(root, final), root)


def _seeded(cfg, final, kind, index, mask, sparsity, early, folder, source) -> list[Job]:
    return [
        Job(cfg, final, kind, index, t, mask, sparsity, early, folder / result_name(kind, index, t), str(source))
        for t in range(final.seeds)
    ]


def check_batch_size(cfg: RunConfig, final: FinalConfig) -> None:
    n = train_split_size(cfg)
    if final.batch_size > n:
        raise ConfigError(f"--final-batch-size {final.batch_size} exceeds the {n:,} training images; lower it")


# --- executing jobs: on the search's backends (this process, worker processes or Ray) -----------------------------

_cache: dict[str, Any] = {}


EVALUATORS_CACHED = 4  # the search's and the held-out evaluator of the last two runs


def _context(cfg: RunConfig, device: torch.device, replicates: tuple[int, ...] | None = None):
    """(Evaluator, splits on the device) for ``cfg`` under ``replicates`` (None: the search's own), cached per data
    and per (run, replicates): the ``EVALUATORS_CACHED`` used last."""
    from evo_sparse.training.data import load_splits
    from evo_sparse.training.fitness import Evaluator

    data_key = repr((cfg.data, str(device)))
    if _cache.get("data_key") != data_key:
        _cache.clear()
        _cache["data_key"] = data_key
        _cache["splits"] = load_splits(cfg, log=lambda _: None)
        _cache["on_device"] = _cache["splits"].to(device)
        _cache["evaluators"] = {}
    evaluators = _cache["evaluators"]
    key = repr((cfg.seed, cfg.model, cfg.train, replicates))
    if key in evaluators:
        evaluators[key] = evaluators.pop(key)  # the most recently used goes last
    else:
        while len(evaluators) >= EVALUATORS_CACHED:
            evaluators.pop(next(iter(evaluators)))
        evaluators[key] = Evaluator(cfg, _cache["splits"], device, replicates=replicates)
    return evaluators[key], _cache["on_device"]


def _work(job: Job, device: str = "cpu") -> dict[str, Any]:
    evaluator, splits = _context(job.cfg, torch.device(device))
    heldout, _ = _context(job.cfg, torch.device(device), (heldout_replicate(job.cfg),))
    return train_network(job, evaluator, splits, heldout)


def _train(device: str, jobs: list[Job], attempt: int | None) -> list[dict[str, Any]]:
    """A task of the backends (``training_work``): train ``jobs`` (a pack of one) on ``device``. In a worker
    (``attempt`` not None), ``EVO_SPARSE_FAULT``'s crash= and hang= (a test hook) act first, choosing by (run seed,
    mask) as they do for the search's evaluations."""
    from evo_sparse.foundations import faults

    if attempt is not None and faults.spec():
        for job in jobs:
            faults.crash_worker(job.cfg.seed, job.mask, attempt)
    return [_work(job, device) for job in jobs]


def _init_worker(device: str) -> None:
    """A worker's start: ``CPU_THREADS`` intra-op threads, so a result does not depend on the number of workers."""
    from evo_sparse.foundations.devices import CPU_THREADS

    torch.set_num_threads(CPU_THREADS)


def training_work():
    """Final training as the backends' ``Work``: a task is one job, run by ``_train`` in a worker that
    ``_init_worker`` started; a job whose worker died at every attempt gets ``lost_record``'s record. The automatic
    hung-worker limit scales with each job's ``work``: a dense network trains ~10x slower than one at 0.9 sparsity."""
    from evo_sparse.execution.work import Work

    return Work(
        call=f"{__name__}:_train",
        warm=f"{__name__}:_init_worker",
        lost=lost_record,
        cost=lambda job: job.work,
        noun="final training",
    )


def pending(jobs: list[Job]) -> list[Job]:
    """The jobs whose result file is not there yet."""
    return [j for j in jobs if not j.path.exists()]


def execute(
    jobs: list[Job],
    *,
    where: RunConfig | None = None,
    device: str | None = None,
    workers: int | None = None,
    on_done: Callable[[Job, dict[str, Any]], None] = lambda job, record: None,
    log: Callable[[str], None] = lambda _: None,
    tensorboard: str | None = None,
) -> list[dict[str, Any]]:
    """Train every job whose file is missing, writing each as it finishes; return every job's record, in job order.

    The trainings run on the search's backends (``execution.backends.plan``) as ``where``'s settings say (default:
    the first job's config; ``device`` and ``workers`` replace its own when given): in this process (``auto`` with
    one worker), in spawned worker processes, one training each at a time (on the CPU with ``CPU_THREADS`` threads
    each, so a result does not depend on the worker count), or as Ray tasks (whose workers load the data from their
    own cache). A worker that dies, or hangs past the automatic limit (ten times the slowest training so far per unit
    of ``Job.work``, at least a minute; ``--eval-timeout`` is for the search's brief evaluations), costs a retry
    (``--max-retries``); a job whose worker died at every attempt gets a failed record, written like any other, and
    the others go on. Ctrl-C or SIGTERM stops the workers; what finished is on disk and a rerun trains the rest.
    A record's ``source`` is the job's, where its run is now (``read_result``).
    ``tensorboard``: a folder for each network's curves (``runs.tensorboard``), written as it finishes (those trained
    before: at the start); ConfigError before any training when TensorBoard is not installed.
    """
    from evo_sparse.execution import backends
    from evo_sparse.foundations.devices import resolve_device

    backends.refuse_while_bootstrapping()
    todo = pending(jobs)
    if tensorboard:
        board, user_done = _board(tensorboard), on_done
        for job in jobs:
            if job not in todo:
                board(job, read_result(job.path, job.source))

        def on_done(job: Job, record: dict[str, Any]) -> None:
            board(job, record)
            user_done(job, record)

    for job in {j.path.parent: j for j in todo}.values():  # one job per results folder
        if not (job.path.parent / "final.json").exists():
            write_json(job.path.parent / "final.json", job.final.to_dict())
        if job.kind == "dense" and not (job.path.parent.parent / "config.json").exists():
            write_json(job.path.parent.parent / "config.json", {"schema": SCHEMA_VERSION, **job.cfg.to_dict()})
    if todo:
        given = {"device": device, "workers": workers, "eval_timeout": 0.0}  # 0: the automatic limit, by work
        cfg = (where or jobs[0].cfg).updated({k: v for k, v in given.items() if v is not None})
        dev = None if cfg.backend == "ray" else resolve_device(cfg.device)
        plan = backends.plan(cfg, dev)
        if plan.workers > len(todo):  # no idle workers: as many as there are trainings
            plan = backends.plan(cfg.updated({"workers": len(todo)}), dev)
        pool = backends.start(plan, cfg, None, log, work=training_work())
        try:
            for i, record in pool.unordered(todo):
                _record(todo[i], record, on_done)
        finally:
            pool.close()
    return [read_result(j.path, j.source) for j in jobs]


def _board(folder: str) -> Callable[[Job, dict[str, Any]], None]:
    """What writes a job's curves into the TensorBoard ``folder``; ConfigError without TensorBoard."""
    from evo_sparse.runs import tensorboard

    tensorboard.summary_writer()
    return lambda job, record: tensorboard.record_network(folder, job.path, Path(job.source).parent.parent, record)


def _record(job: Job, record: dict[str, Any], on_done) -> None:
    write_json(job.path, record)
    on_done(job, record)


def read_result(path: Path, source: str | Path) -> dict[str, Any]:
    """One network's record, its ``source`` the run (or dense) folder that holds it now, not the path written where it
    was trained: run folders moved or extracted from an archive keep sources relative to where they are."""
    return read_json(path, "final training result") | {"source": str(source)}


def read_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every network record in a ``final_<hash>`` folder, in file-name order (``read_result``)."""
    return [read_result(p, p.parent.parent) for p in result_files(Path(folder))]


def run_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of a run's final training and of its dense parent; RunStateError when it holds several recipes."""
    root = Path(run_dir)
    folders = final_folders(root)
    if len(folders) > 1:
        names = ", ".join(p.name for p in folders)
        raise RunStateError(f"{root} holds several final trainings ({names}); give one of those folders instead")
    if not folders:
        return []
    rows = read_results(folders[0])
    cfg, _ = load_run(root)
    dense = dense_folder(cfg, root.parent.parent) / folders[0].name
    return rows + (read_results(dense) if dense.is_dir() else [])
