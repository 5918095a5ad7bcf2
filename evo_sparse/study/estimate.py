"""What a command would cost, without running it (``--dry-run``): its trainings, their training images, an estimate of
the time on this device and of the disk it would fill. It loads no data and writes nothing.

The time is measured, then extrapolated. Every network kind the command trains (a mask sampled at each sparsity, the
dense parent, at each batch size) is timed by ``training.timing``: a few steps of the one trainer on random images,
after a warm-up step, and one batch scored forward. A training then takes its images times the time per image, scaled
from the timed mask to the mean cost of its masks by MACs (``final.training_cost``), plus building the network;
trainings that run side by side (``--workers``, at most as many as a generation or a final training has) divide it.
Not timed: start-up (data, worker processes, figures), ``--pack``, ``--compile``. The disk is the size of the rows and
records the command would write, built here at full precision, and measured sizes of figures and events.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evo_sparse.foundations.config import FinalConfig, RunConfig, train_split_size
from evo_sparse.foundations.paths import RunPaths, run_folder
from evo_sparse.foundations.progress import format_seconds
from evo_sparse.foundations.seeds import derive
from evo_sparse.foundations.storage import SCHEMA_VERSION, read_jsonl
from evo_sparse.models.masks import Mask, sample
from evo_sparse.models.registry import architecture
from evo_sparse.study import final

COST_MASKS = 16  # masks sampled for the mean cost of a sparsity
FIGURE_BYTES = 60_000  # one figure as PNG, PDF and JSON sidecar, measured on smoke studies
EVENT_BYTES = 60  # one TensorBoard scalar event, measured


@dataclass(frozen=True)
class Trainings:
    """``count`` like trainings of ``cfg``'s network at ``sparsity`` (mean cost ``cost``): each ``images`` training
    images in batches of ``batch_size`` and ``scored`` images forward (validation, test) in ``eval_batch_size``;
    ``side_by_side``: how many of them may run at once (a generation's evaluations, a final training's networks)."""

    what: str
    cfg: RunConfig
    sparsity: float
    count: int
    images: int
    scored: int
    batch_size: int
    eval_batch_size: int
    side_by_side: int
    cost: float


@dataclass
class Estimate:
    """The trainings of a command, the bytes it would write (by what), and notes for the reader."""

    trainings: list[Trainings] = field(default_factory=list)
    disk: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add_disk(self, what: str, size: float) -> None:
        self.disk[what] = self.disk.get(what, 0) + int(size)


# --- what a command trains ------------------------------------------------------------------------------------------


def mean_cost(cfg: RunConfig, sparsity: float) -> float:
    """The mean ``final.training_cost`` of ``COST_MASKS`` masks sampled as the search samples them (dense at 0)."""
    layout = architecture(cfg.model).layout
    if sparsity == 0:
        return final.training_cost(cfg, None)
    rng = random.Random(derive(cfg.seed, "dry-run-cost"))
    masks = [Mask(layout, tuple(sample(layout, sparsity, cfg.search.sampling, rng))) for _ in range(COST_MASKS)]
    return sum(final.training_cost(cfg, m.widths()) for m in masks) / len(masks)


def _scored(cfg: RunConfig) -> int:
    """Validation images one fitness scores."""
    return min(cfg.train.val_images or cfg.data.val_size, cfg.data.val_size)


def _brief(cfg: RunConfig, what: str, count: int, sparsity: float, side_by_side: int, cost: float) -> Trainings:
    t = cfg.train
    images = t.train_images // t.batch_size * t.batch_size
    return Trainings(
        what, cfg, sparsity, count, images, _scored(cfg), t.batch_size, t.eval_batch_size, side_by_side, cost
    )


def evaluations(cfg: RunConfig) -> int:
    """A search's fitness trainings: its budget, else P + (G - 1)(P - K) (for the GA an upper bound: unchanged
    offspring and masks scored before are not trained)."""
    return math.ceil(cfg.search.trainings)


def search(cfg: RunConfig, estimate: Estimate, runs: int = 1, done: int = 0) -> None:
    """``runs`` searches like ``cfg`` (less ``done`` evaluations already in the journal) and the files they add."""
    s = cfg.search
    left = max(0, runs * evaluations(cfg) - done)
    label = f"search {s.algorithm} s={s.sparsity:g}: fitness trainings"
    count = left * cfg.train.replicates
    estimate.trainings.append(
        _brief(cfg, label, count, s.sparsity, s.population - s.survivors, mean_cost(cfg, s.sparsity))
    )
    if not left:
        return
    row = journal_row_bytes(cfg)
    estimate.add_disk("search journals", left * row)
    estimate.add_disk("search checkpoints and configs", runs * (checkpoint_bytes(cfg, row) + 3_000))
    if cfg.tensorboard:  # two scalars an evaluation, five a generation, the settings once
        estimate.add_disk("TensorBoard events", (2 * left + 5 * runs * s.generations) * EVENT_BYTES + runs * 2_000)


def final_trainings(estimate: Estimate, groups: dict, *, tensorboard: bool = False) -> None:
    """Full trainings, run together: ``{(config, recipe, kind, sparsity): [each network's cost]}``; each adds its brief
    trainings (the held-out early fitness, and the early fitness where the search did not measure it)."""
    jobs = sum(len(costs) for costs in groups.values())
    for (cfg, fc, kind, sparsity), costs in groups.items():
        per_epoch = train_split_size(cfg) // fc.batch_size * fc.batch_size
        scored = fc.epochs * cfg.data.val_size + (cfg.data.val_size if cfg.data.dataset == "synthetic" else 10_000)
        cost = sum(costs) / len(costs)
        what = "final dense" if kind == "dense" else f"final {kind} ({cfg.search.algorithm} s={sparsity:g})"
        n = len(costs)
        full = Trainings(
            f"{what}: full trainings",
            cfg,
            sparsity,
            n,
            fc.epochs * per_epoch,
            scored,
            fc.batch_size,
            fc.eval_batch_size,
            jobs,
            cost,
        )
        early = n * (1 + (kind != "found") * cfg.train.replicates)  # held out, and the search's where it had none
        estimate.trainings += [full, _brief(cfg, f"{what}: early-fitness trainings", early, sparsity, jobs, cost)]
        estimate.add_disk("final training records", n * record_bytes(cfg, fc))
        if tensorboard:
            estimate.add_disk("TensorBoard events", n * (3 * fc.epochs + 1) * EVENT_BYTES)


def jobs_groups(jobs: list[final.Job]) -> dict[tuple[RunConfig, FinalConfig, str, float], list[float]]:
    """``final_trainings``' groups of actual jobs (each network's cost from its mask; seeds merged)."""
    groups: dict[tuple[RunConfig, FinalConfig, str, float], list[float]] = {}
    for job in jobs:
        widths = Mask.decode(architecture(job.cfg.model).layout, job.mask).widths()
        key = (job.cfg.updated({"seed": 0}), job.final, job.kind, job.sparsity)
        groups.setdefault(key, []).append(final.training_cost(job.cfg, widths))
    return groups


# --- bytes ------------------------------------------------------------------------------------------------------------


def journal_row_bytes(cfg: RunConfig) -> int:
    """One journal line of ``cfg``'s run: a full-precision record, its mask and the row's fields."""
    from evo_sparse.training.records import combine, fitness_record

    layout = architecture(cfg.model).layout
    mask = Mask(layout, tuple(sample(layout, cfg.search.sparsity, cfg.search.sampling, random.Random(0))))
    params, macs = architecture(cfg.model).cost(mask.widths())
    one = fitness_record(
        sparsity=cfg.search.sparsity,
        params=params,
        macs=macs,
        train_images=cfg.train.train_images,
        batch_size=cfg.train.batch_size,
        seconds=12.345678901234567,
        accuracy=0.12345678901234567,
        val_loss=2.345678901234567,
        train_loss=2.345678901234567,
    )
    row = {"schema": SCHEMA_VERSION, "gen": 10, "index": 10, "retries": 0} | combine([one] * cfg.train.replicates)
    return len(json.dumps(row | {"mask": mask.encode()}, separators=(",", ":"))) + 1


def checkpoint_bytes(cfg: RunConfig, row: int) -> int:
    """The checkpoint: population and hall of fame (a journal line each, indented), logbook, every RNG state."""
    from evo_sparse.runs.checkpoint import rng_state

    s = cfg.search
    return int((s.population + s.survivors) * row * 1.3) + s.generations * 150 + len(json.dumps(rng_state(), indent=1))


def record_bytes(cfg: RunConfig, fc: FinalConfig) -> int:
    """One fully trained network's record (its curves of ``fc.epochs`` values each)."""
    from evo_sparse.study.final_network import lost_record

    layout = architecture(cfg.model).layout
    mask = Mask(layout, (1,) * layout.size).encode()
    job = final.Job(cfg, fc, "random", 0, 0, mask, 0.5, None, Path("x"), "runs/x/seed_0")
    curves = {k: [0.12345678901234567] * fc.epochs for k in ("val_acc", "val_loss", "train_loss", "epoch_seconds")}
    return len(json.dumps(lost_record(job, "") | curves | {"reason": None}, indent=1)) + 40  # + the numbers left None


# --- the commands -----------------------------------------------------------------------------------------------------


def for_run(cfg: RunConfig) -> Estimate:
    """A search, less what its folder's journal already holds."""
    from evo_sparse.runs.run import search_finished

    est = Estimate()
    journal = RunPaths(run_folder(cfg)).evaluations
    done = len(read_jsonl(journal, repair=False)) if journal.exists() else 0
    if search_finished(cfg):
        done = evaluations(cfg)
        est.notes.append(f"{run_folder(cfg)} is finished: a rerun does nothing")
    elif done:
        est.notes.append(f"{run_folder(cfg)} already holds {done} evaluations: a rerun resumes after them")
    search(cfg, est, done=done)
    return _ga_note(est, [cfg])


def for_final(jobs: list[final.Job], *, tensorboard: str | None = None) -> Estimate:
    """The final trainings of ``jobs`` whose result is not there yet."""
    est = Estimate()
    todo = final.pending(jobs)
    if len(todo) < len(jobs):
        est.notes.append(f"{len(jobs) - len(todo)} of {len(jobs)} networks are trained already")
    final_trainings(est, jobs_groups(todo), tensorboard=bool(tensorboard))
    return est


def for_paper(configs: dict[tuple[float, int], RunConfig], dense: list[RunConfig], fc: FinalConfig) -> Estimate:
    """A paper study (``paper.plan``'s searches and dense parents): the searches, then one final training of each
    run's best K and K random masks and of the dense parents."""
    est = Estimate()
    groups = _searches(est, list(configs.values()), fc, kinds=("found", "random"))
    groups |= jobs_groups(final.pending([j for c in dense for j in final.dense_jobs(c, Path(c.runs_dir), fc)]))
    final_trainings(est, groups, tensorboard=any(c.tensorboard for c in [*configs.values(), *dense]))
    est.add_disk("study folder", 5 * FIGURE_BYTES + est.disk.get("final training records", 0))  # results: a row each
    return _ga_note(est, configs.values())


def for_compare(configs: dict[tuple[str, int], RunConfig], fc: FinalConfig | None) -> Estimate:
    """A comparison (``compare.plan``'s runs), with the final training of each run's best masks when ``fc``."""
    est = Estimate()
    fc = fc and fc.updated({"masks": fc.masks or 1})
    groups = _searches(est, list(configs.values()), fc, kinds=("found",))
    final_trainings(est, groups, tensorboard=any(c.tensorboard for c in configs.values()))
    est.add_disk("comparison folder", 2 * FIGURE_BYTES)
    return _ga_note(est, configs.values())


def _ga_note(est: Estimate, configs) -> Estimate:
    if any(c.search.algorithm != "weedout" for c in configs):
        est.notes.append(
            "a GA (or a plug-in) trains only the masks it has not scored before: its count of trainings is an upper "
            "bound"
        )
    return est


def _searches(est: Estimate, configs: list[RunConfig], fc: FinalConfig | None, kinds) -> dict:
    """Add the searches of ``configs`` not finished yet; return ``final_trainings``' groups of their final training
    (``kinds`` of networks under ``fc``): the actual jobs of finished runs, the expected ones of the others."""
    from evo_sparse.runs.run import search_finished

    by_shape: dict[RunConfig, list[RunConfig]] = {}
    for cfg in configs:  # runs that differ in their seed only are one group
        by_shape.setdefault(cfg.updated({"seed": 0}), []).append(cfg)
    groups: dict[tuple[RunConfig, FinalConfig, str, float], list[float]] = {}
    for shape, cfgs in by_shape.items():
        done = [c for c in cfgs if search_finished(c)]
        if len(done) < len(cfgs):
            search(shape, est, runs=len(cfgs) - len(done))
        if done:
            est.notes.append(f"{len(done)} of {len(cfgs)} searches like {run_folder(shape).parent} are finished")
        if fc is None:
            continue
        for c in done:
            jobs = [j for j in final.pending(final.run_jobs(run_folder(c), fc, dense=False)) if j.kind in kinds]
            for key, costs in jobs_groups(jobs).items():
                groups.setdefault(key, []).extend(costs)
        k = (fc.masks or shape.search.survivors) * fc.seeds * (len(cfgs) - len(done))
        cost = mean_cost(shape, shape.search.sparsity)
        for kind in kinds if k else ():
            groups.setdefault((shape, fc, kind, shape.search.sparsity), []).extend([cost] * k)
    return groups


# --- time -------------------------------------------------------------------------------------------------------------


def seconds(est: Estimate, device, workers: int, log: Callable[[str], None] = lambda _: None) -> list[float]:
    """Each kind of training's estimated wall-clock seconds on ``device`` with ``workers`` trainings at once."""
    from evo_sparse.training.timing import time_network

    timings: dict[tuple, tuple] = {}
    out = []
    for t in est.trainings:
        key = (t.cfg.model, t.sparsity and t.cfg.search.sampling, t.sparsity, t.batch_size, t.eval_batch_size)
        if t.count and key not in timings:
            mask = _sampled(t.cfg, t.sparsity)
            log(f"timing {architecture(t.cfg.model).label} at sparsity {t.sparsity:g}, batch {t.batch_size} ...")
            timed = time_network(t.cfg, mask, t.batch_size, t.eval_batch_size, device)
            timings[key] = timed, final.training_cost(t.cfg, mask.widths())
        if not t.count:
            out.append(0.0)
            continue
        m, cost = timings[key]
        one = (t.images * m.train_s + t.scored * m.score_s) * t.cost / cost + m.build_s  # scaled by MACs
        out.append(t.count * one / max(1, min(workers, t.side_by_side, t.count)))
    return out


def _sampled(cfg: RunConfig, sparsity: float) -> Mask:
    layout = architecture(cfg.model).layout
    if not sparsity:
        return Mask(layout, (1,) * layout.size)
    return Mask(
        layout, tuple(sample(layout, sparsity, cfg.search.sampling, random.Random(derive(cfg.seed, "dry-run"))))
    )


def report(est: Estimate, cfg: RunConfig, log: Callable[[str], None] = lambda _: None) -> str:
    """``est`` timed on ``cfg``'s device and backend (``--device``, ``--backend``, ``--workers``), as lines."""
    from evo_sparse.execution import backends
    from evo_sparse.foundations.devices import resolve_device

    device = resolve_device(cfg.device)
    if cfg.backend == "ray":
        workers, where = 1, f"{device}, one training at a time (a Ray cluster runs as many at once as it holds)"
    else:
        plan = backends.plan(cfg, device)
        workers, where = max(1, plan.workers), f"{device}, {plan.describe()}"
    return format_estimate(est, seconds(est, device, workers, log), where)


def format_estimate(est: Estimate, times: list[float], where: str) -> str:
    """The estimate as lines: one per kind of training, then the totals, the disk, and the notes."""
    lines = [f"{'trainings':>10} {'images each':>12} {'time (est.)':>12}  what"]
    for t, s in zip(est.trainings, times, strict=True):
        if t.count:
            lines.append(f"{t.count:>10,} {t.images:>12,} {format_seconds(s):>12}  {t.what}")
    count = sum(t.count for t in est.trainings)
    images = sum(t.count * t.images for t in est.trainings)
    lines.append(f"total: {count:,} trainings, {images:,} training images")
    lines.append(
        f"estimated time: {format_seconds(sum(times))} on {where} (an estimate: a few timed training steps of each "
        "network, extrapolated; start-up not counted)"
    )
    parts = ", ".join(f"{what} {_bytes(b)}" for what, b in est.disk.items() if b)
    lines.append(f"estimated disk: {_bytes(sum(est.disk.values()))}" + (f" ({parts})" if parts else ""))
    return "\n".join(lines + [f"note: {n}" for n in est.notes] + ["dry run: nothing was trained or written"])


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
