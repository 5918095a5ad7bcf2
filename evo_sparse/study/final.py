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
import math
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evo_sparse.foundations.config import (
    STEP_MILESTONES,
    FinalConfig,
    RunConfig,
    SearchConfig,
    TrainConfig,
    train_split_size,
)
from evo_sparse.foundations.errors import ConfigError, RunStateError
from evo_sparse.foundations.seeds import derive
from evo_sparse.foundations.storage import SCHEMA_VERSION, read_json, write_json
from evo_sparse.models.masks import Mask, sample

KINDS = ("found", "random", "dense")
CHUNK_IMAGES = 8192  # images augmented at a time: bounds the memory of one epoch's augmentation


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
        per_epoch = train_split_size(self.cfg) // self.final.batch_size * self.final.batch_size
        brief = self.cfg.train.train_images  # one brief training: one replicate of a fitness
        early = 0 if self.early else self.cfg.train.replicates * brief
        return self.final.epochs * per_epoch + early + brief  # + the held-out replicate's early fitness

    @property
    def work(self) -> float:
        """Its share of a progress estimate: ``images`` times the network's cost per image (``training_cost``)."""
        from evo_sparse.runs.run import layout_of

        return self.images * training_cost(self.cfg, Mask.decode(layout_of(self.cfg), self.mask).widths())


# Per training image, what a network costs beyond its multiply-accumulates (data, optimizer, Python), in MACs:
# measured on the 2-core CPU, one thread, WRN-16-2 (dense 101M MACs: 105 images/s; 0.9 sparsity 1M MACs: 1,150).
OVERHEAD_MACS = 9e6


def training_cost(cfg: RunConfig, widths: dict[str, int] | None) -> float:
    """Relative cost of one training image of ``cfg``'s network at ``widths`` (None: dense), for ETAs."""
    from evo_sparse.models.registry import architecture

    return architecture(cfg.model).cost(widths)[1] + OVERHEAD_MACS


# --- folders -------------------------------------------------------------------------------------------------------


def final_folder(root: Path, final: FinalConfig) -> Path:
    return Path(root) / f"final_{final.final_hash()}"


def result_name(kind: str, index: int, train_seed: int) -> str:
    return f"{kind}_{index}_seed{train_seed}.json"


def dense_folder(cfg: RunConfig, runs_dir: Path) -> Path:
    """The dense parent's folder: a function of everything but the search settings (and where it runs)."""
    net = dataclasses.replace(cfg, search=SearchConfig())
    return Path(runs_dir) / f"dense_{net.run_hash()}" / f"seed_{cfg.seed}"


def load_run(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """(config, checkpoint) of a finished run, both checked; RunStateError otherwise."""
    from evo_sparse.runs import checkpoint
    from evo_sparse.runs.run import RunPaths, layout_of, read_config

    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise RunStateError(f"{run_dir} is not a run folder (no config.json); give the folder `evo-sparse run` printed")
    cfg = read_config(paths.config)
    ckpt = checkpoint.read(paths.checkpoint, cfg, layout_of(cfg)) if paths.checkpoint.exists() else None
    if ckpt is None or ckpt["next_generation"] < cfg.search.generations:
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
    k = final.masks or cfg.search.survivors
    found = [e for e in ckpt["hall_of_fame"] if e["record"].get("status") == "ok"][:k]
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


# --- training ------------------------------------------------------------------------------------------------------


def lr_at(step: int, steps: int, epochs: int, final: FinalConfig) -> float:
    """Learning rate at ``step`` of ``steps``: linear warm-up, then the schedule (step: x gamma at 30/60/80% of the
    epochs; cosine to 0; onecycle: linear to 0)."""
    up = round(final.warmup * steps)
    if step < up:
        return final.lr * (step + 1) / up
    if final.schedule == "step":
        epoch = step * epochs // steps
        return final.lr * final.gamma ** sum(epoch >= round(m * epochs) for m in STEP_MILESTONES)
    progress = (step - up) / max(1, steps - up)
    if final.schedule == "cosine":
        return final.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return final.lr * max(0.0, 1 - progress)


def epoch_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch of augmented uint8 batches: a seeded shuffle (last partial batch dropped), cropped and flipped."""
    from evo_sparse.training.data import augment_batch

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g).to(x.device)
    steps = len(x) // batch_size
    per_chunk = max(1, CHUNK_IMAGES // batch_size) * batch_size
    for start in range(0, steps * batch_size, per_chunk):
        idx = order[start : min(start + per_chunk, steps * batch_size)]
        xs, ys = augment_batch(x[idx], g), y[idx]
        for i in range(0, len(idx), batch_size):
            yield xs[i : i + batch_size], ys[i : i + batch_size]


def heldout_replicate(cfg: RunConfig) -> int:
    """The replicate a run's search never trained under: it used replicates 0 .. R - 1 (``--replicates R``)."""
    return cfg.train.replicates


def heldout_evaluator(cfg: RunConfig, splits, device: torch.device | str = "cpu"):
    """An ``Evaluator`` of ``cfg``'s fitness under only its held-out replicate (``heldout_replicate``)."""
    from evo_sparse.training.fitness import Evaluator

    return Evaluator(cfg, splits, device, replicates=[heldout_replicate(cfg)])


def _fitness(record: dict[str, Any]) -> float | None:
    return record.get("fitness") if record.get("status") == "ok" else None


def train_network(job: Job, evaluator, splits, heldout=None) -> dict[str, Any]:
    """Fully train ``job``'s network; its record (``status`` failed with a ``reason`` if the loss diverged).

    ``early_fitness`` is the search's record (found masks) or ``evaluator``'s measure; ``early_fitness_heldout`` is
    ``heldout``'s (default: ``heldout_evaluator`` of the job's config), None where that brief training failed.
    """
    from evo_sparse.training.data import normalize
    from evo_sparse.training.trainer import evaluate, make_optimizer

    start = time.perf_counter()
    f, cfg = job.final, job.cfg
    mask = Mask.decode(evaluator.layout, job.mask)
    early = job.early or evaluator.evaluate_mask(mask)
    if heldout is None:
        heldout = heldout_evaluator(cfg, splits, evaluator.device)
    early_heldout = heldout.evaluate_mask(mask)
    params, macs = evaluator.arch.cost(mask.widths())
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": job.kind,
        "index": job.index,
        "seed": cfg.seed,
        "train_seed": job.train_seed,
        "sparsity": job.sparsity,
        "node_sparsity": mask.sparsity,
        "algorithm": None if job.kind == "dense" else cfg.search.algorithm,
        "params": params,
        "flops": macs,  # multiply-accumulates per 32x32 image, the pruning literature's "FLOPs"
        "early_fitness": _fitness(early),
        "early_from": "search" if job.early else "evaluator",
        "early_fitness_heldout": _fitness(early_heldout),  # a replicate the search never saw: no winner's curse
        "early_heldout_replicate": heldout_replicate(cfg),
        "epochs": f.epochs,
        "recipe": f.final_hash(),
        "mask": job.mask,
        "source": job.source,
        "device": str(evaluator.device),
    }
    device = evaluator.device
    steps_per_epoch = len(splits.train_x) // f.batch_size
    steps = steps_per_epoch * f.epochs
    curves: dict[str, list[float]] = {"val_acc": [], "val_loss": [], "train_loss": [], "epoch_seconds": []}
    opt_cfg = TrainConfig(lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive(cfg.seed, f"final-train:{job.train_seed}"))
        model = evaluator.build(mask)
        opt = make_optimizer(model, opt_cfg)
        for epoch in range(f.epochs):
            t0, step0 = time.perf_counter(), epoch * steps_per_epoch
            total = torch.zeros((), device=device)
            model.train()
            batches = epoch_batches(
                splits.train_x, splits.train_y, f.batch_size, derive(cfg.seed, f"final-data:{job.train_seed}:{epoch}")
            )
            for i, (x, y) in enumerate(batches):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step0 + i, steps, f.epochs, f)
                loss = F.cross_entropy(model(normalize(x)), y, label_smoothing=f.label_smoothing)
                if not torch.isfinite(loss):
                    return record | _finish(curves, start, status="failed", reason=f"loss became {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
            acc, val_loss = evaluate(model, splits.val_x, splits.val_y, f.eval_batch_size)
            curves["val_acc"].append(acc)
            curves["val_loss"].append(val_loss)
            curves["train_loss"].append(float(total) / steps_per_epoch)
            curves["epoch_seconds"].append(time.perf_counter() - t0)
        test_acc, test_loss = evaluate(model, splits.test_x, splits.test_y, f.eval_batch_size)
    if not math.isfinite(test_loss) or not all(map(math.isfinite, curves["val_loss"])):
        return record | _finish(curves, start, status="failed", reason="validation or test loss is not finite")
    return record | _finish(curves, start, test_acc=test_acc, test_loss=test_loss, images=steps * f.batch_size)


def _finish(curves, start, *, status="ok", reason=None, test_acc=None, test_loss=None, images=None) -> dict[str, Any]:
    acc = curves["val_acc"]
    return curves | {
        "status": status,
        "reason": reason,
        "final_val_acc": acc[-1] if acc else None,
        "best_val_acc": max(acc) if acc else None,
        "final_test_acc": test_acc,
        "test_loss": test_loss,
        "train_images": images,
        "seconds": time.perf_counter() - start,
        "val_loss": [v if math.isfinite(v) else None for v in curves["val_loss"]],
        "train_loss": [v if math.isfinite(v) else None for v in curves["train_loss"]],
    }


# --- executing jobs: in this process, or over spawned CPU workers ---------------------------------------------------

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


def _work_indexed(item: tuple[int, Job]) -> tuple[int, dict[str, Any]]:
    return item[0], _work(item[1])


def _init_worker() -> None:
    from evo_sparse.foundations.devices import CPU_THREADS

    torch.set_num_threads(CPU_THREADS)


def pending(jobs: list[Job]) -> list[Job]:
    """The jobs whose result file is not there yet."""
    return [j for j in jobs if not j.path.exists()]


def execute(
    jobs: list[Job],
    *,
    device: str = "auto",
    workers: int = 0,
    on_done: Callable[[Job, dict[str, Any]], None] = lambda job, record: None,
) -> list[dict[str, Any]]:
    """Train every job whose file is missing, writing each as it finishes; return every job's record, in job order.

    On the CPU, ``workers`` spawned processes (0 = one per core, 1 = this process) train one network each at a time,
    with one thread each, so a result does not depend on the worker count.
    """
    from evo_sparse.foundations.devices import cpu_cores, resolve_device

    todo = pending(jobs)
    for job in {j.path.parent: j for j in todo}.values():  # one job per results folder
        if not (job.path.parent / "final.json").exists():
            write_json(job.path.parent / "final.json", job.final.to_dict())
        if job.kind == "dense" and not (job.path.parent.parent / "config.json").exists():
            write_json(job.path.parent.parent / "config.json", {"schema": SCHEMA_VERSION, **job.cfg.to_dict()})
    if todo:
        dev = resolve_device(device)
        n = (workers or cpu_cores()) if dev.type == "cpu" else 1
        n = min(n, len(todo))
        if n <= 1:
            for job in todo:
                _record(job, _work(job, str(dev)), on_done)
        else:
            ctx = multiprocessing.get_context("spawn")  # never fork: CUDA and OpenMP state is not inherited
            with ctx.Pool(n, initializer=_init_worker) as pool:
                for i, record in pool.imap_unordered(_work_indexed, enumerate(todo), chunksize=1):
                    _record(todo[i], record, on_done)
    return [read_json(j.path, "final training result") for j in jobs]


def _record(job: Job, record: dict[str, Any], on_done) -> None:
    write_json(job.path, record)
    on_done(job, record)


def read_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every network record in a ``final_<hash>`` folder, in file-name order."""
    paths = sorted(p for p in Path(folder).glob("*_seed*.json"))
    return [read_json(p, "final training result") for p in paths]


def run_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of a run's final training and of its dense parent; RunStateError when it holds several recipes."""
    root = Path(run_dir)
    folders = sorted(p for p in root.glob("final_*") if p.is_dir())
    if len(folders) > 1:
        names = ", ".join(p.name for p in folders)
        raise RunStateError(f"{root} holds several final trainings ({names}); give one of those folders instead")
    if not folders:
        return []
    rows = read_results(folders[0])
    cfg, _ = load_run(root)
    dense = dense_folder(cfg, root.parent.parent) / folders[0].name
    return rows + (read_results(dense) if dense.is_dir() else [])
