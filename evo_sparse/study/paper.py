"""The paper experiment in one call (``paper``) and GA vs Random Search at an equal budget (``compare``).

``paper``: for every sparsity and seed, the search (``runs.execute``), then the final training of its best K masks and
K random ones (``final``), the dense parent once per seed (sparsity 0 stands for it: a dense network has one mask),
the statistics (``analysis``) and the figures (``plots``). Every step is skipped when done, so a rerun does nothing
and a killed study resumes. Its folder, ``<runs_dir>/study_<hash>/``, holds (names spelled once, in ``StudyPaths``):

- ``study.json``: the settings, and the run and dense folders the results come from (relative to the study folder).
- ``results.json``: one row per network and training seed (``ROW_KEYS`` plus the per-epoch curves);
  ``results.csv``: the same rows without the curves.
- ``analysis.json``: the statistics; the figures as ``<name>.png/.pdf/.json`` (see ``plots``).

``compare``: N seeds of each algorithm, each given the same budget of fitness evaluations (hence of training images:
every evaluation trains on the same number); Weedout's count at ``--generations`` sets it. A GA run evaluates only
the offspring that changed, so it runs more generations and its journal is cut at the budget (rows in the order the
loop asked for them, so the cut does not depend on which worker finished first).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import ALGORITHMS, FinalConfig, RunConfig, train_split_size
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.progress import format_seconds
from evo_sparse.foundations.storage import SCHEMA_VERSION, read_json, read_jsonl, write_json, write_text_atomic
from evo_sparse.models.registry import architecture
from evo_sparse.stats import analysis
from evo_sparse.study import final, plots

ROW_KEYS = (
    "sparsity",
    "seed",
    "kind",
    "index",
    "train_seed",
    "algorithm",
    "early_fitness",
    "early_fitness_heldout",
    "final_test_acc",
    "final_val_acc",
    "best_val_acc",
    "params",
    "flops",
    "node_sparsity",
    "epochs",
    "train_images",
    "status",
    "reason",
    "seconds",
    "recipe",
    "mask",
    "source",
)
CURVE_KEYS = ("val_acc", "val_loss", "train_loss")


@dataclass(frozen=True)
class StudyPaths:
    root: Path

    study = property(lambda self: self.root / "study.json")
    results_json = property(lambda self: self.root / "results.json")
    results_csv = property(lambda self: self.root / "results.csv")
    analysis = property(lambda self: self.root / "analysis.json")
    comparison = property(lambda self: self.root / "comparison.json")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def parse_list(text: str, option: str, kind=float) -> list:
    """``"0,0.5,0.9"`` as a list; ConfigError naming ``option`` for anything else."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--{option} must be distinct comma-separated values like 0,0.5,0.9, not {text!r}")
    return values


class StudyProgress:
    """One stderr line per finished step: steps done, share of the work, elapsed time and an ETA.

    Work is counted in training images (a search evaluation's budget, a full training's epochs) weighted by the
    network's cost per image (``final.training_cost``: a dense network costs ~10x one at 0.9 sparsity); the ETA is
    the rate of the work computed in this process applied to the work left (steps already on disk cost nothing)."""

    def __init__(self, log: Callable[[str], None], *, enabled: bool = True, label: str = "study"):
        self.log, self.enabled, self.label = log, enabled, label
        self.total = self.done = self.computed = 0
        self.steps = self.steps_done = 0
        self.start = time.perf_counter()

    def add(self, steps: int, work: float) -> None:
        self.steps += steps
        self.total += work

    def skipped(self, steps: int, work: float, what: str = "final trainings") -> None:
        """``steps`` found done on disk: counted as done, one line for all of them."""
        self.steps_done += steps
        self.done += work
        if steps and self.enabled:
            self.log(f"[{self.label}] {steps} {what} already on disk")

    def skip_done(self, jobs: list[final.Job]) -> None:
        """Count the final-training ``jobs`` whose result is already on disk as done."""
        on_disk = [j for j in jobs if j.path.exists()]
        self.skipped(len(on_disk), sum(j.work for j in on_disk))

    def trained(self, label: str, job: final.Job, record: dict[str, Any]) -> None:
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


def search_work(cfg: RunConfig) -> float:
    """Work of a search of ``cfg`` (``StudyProgress``): its training images (an upper bound for the GA) times cost."""
    s = cfg.search
    return (s.population + (s.generations - 1) * (s.population - s.survivors)) * cfg.train.train_images * _cost(cfg)


def _cost(cfg: RunConfig, sparsity: float | None = None) -> float:
    """``final.training_cost`` of ``cfg``'s network at its (or the given) sparsity, by layerwise counts."""
    from evo_sparse.runs.run import layout_of

    layout = layout_of(cfg)
    s = cfg.search.sparsity if sparsity is None else sparsity
    return final.training_cost(cfg, dict(zip(layout.names, layout.layerwise_counts(s), strict=True)))


def _search_done(cfg: RunConfig) -> bool:
    from evo_sparse.runs.run import RunPaths, run_folder

    path = RunPaths(run_folder(cfg)).checkpoint
    return path.exists() and read_json(path, "checkpoint").get("next_generation", 0) >= cfg.search.generations


def _job_work(cfg: RunConfig, fc: FinalConfig, kind: str) -> float:
    per_epoch = train_split_size(cfg) // fc.batch_size * fc.batch_size
    images = fc.epochs * per_epoch + (0 if kind == "found" else cfg.train.train_images)
    return images * _cost(cfg, 0.0 if kind == "dense" else None)


# --- the paper experiment ---------------------------------------------------------------------------------------------


def paper(
    base: RunConfig,
    fc: FinalConfig,
    *,
    sparsities: list[float],
    seeds: int,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Run (or resume, or skip) the whole study; (its folder, the statistics). ConfigError for bad settings, before
    any work."""
    from evo_sparse.runs.run import execute, run_folder

    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, not {seeds}")
    fc.validate()
    architecture(base.model)  # the model checks its own depth and width
    for s in sparsities:  # 0 too: it must be a sparsity, though it trains only the dense parent
        base.updated({"search.sparsity": s}).validate()
    configs = {
        (s, seed): base.updated({"search.sparsity": s, "seed": seed}).validate()
        for s in sparsities
        if s > 0
        for seed in range(seeds)
    }
    dense_cfgs = [base.updated({"seed": seed}).validate() for seed in range(seeds)] if 0 in sparsities else []
    for cfg in [*configs.values(), *dense_cfgs]:
        final.check_batch_size(cfg, fc)
    key = {
        "run": {k: v for k, v in base.hashed_items().items() if k not in ("search.sparsity", "seed")},
        "sparsities": sorted(sparsities),
        "seeds": seeds,
        "final": fc.hashed_items() | {"masks": fc.masks, "seeds": fc.seeds},
    }
    paths = StudyPaths(Path(base.runs_dir) / f"study_{_hash(key)}")
    runs_dir = Path(base.runs_dir)
    progress = StudyProgress(log, enabled=show_progress)
    for cfg in configs.values():
        k = fc.masks or cfg.search.survivors
        jobs = 2 * k * fc.seeds
        progress.add(
            1 + jobs,
            search_work(cfg) + k * fc.seeds * (_job_work(cfg, fc, "found") + _job_work(cfg, fc, "random")),
        )
    for cfg in dense_cfgs:
        progress.add(fc.seeds, fc.seeds * _job_work(cfg, fc, "dense"))

    jobs: list[final.Job] = []
    for (s, seed), cfg in sorted(configs.items()):
        was_done = _search_done(cfg)
        run_dir = execute(cfg, log=log, show_progress=show_progress)
        progress.finished(f"search s={s:g} seed {seed}", search_work(cfg), computed=not was_done)
        jobs += final.run_jobs(run_dir, fc, dense=False)
    for cfg in dense_cfgs:
        jobs += final.dense_jobs(cfg, runs_dir, fc)
    progress.skip_done(jobs)

    def on_done(job: final.Job, record: dict[str, Any]) -> None:
        progress.trained(f"final {job.kind} #{job.index} s={job.sparsity:g} {job.seed_label}", job, record)

    records = final.execute(jobs, device=base.device, workers=base.workers, on_done=on_done)
    rows = [table_row(r, paths.root) for r in records]
    result = analysis.analyse(rows, seed=0)
    study = {
        "schema": SCHEMA_VERSION,
        "sparsities": sorted(sparsities),
        "seeds": seeds,
        "runs": [os.path.relpath(run_folder(c), paths.root) for _, c in sorted(configs.items())],
        "dense": [os.path.relpath(final.dense_folder(c, runs_dir), paths.root) for c in dense_cfgs],
        "run_config": base.to_dict(),
        "final": fc.to_dict(),
    }
    changed = [
        _write_if_changed(p, obj)
        for p, obj in ((paths.study, study), (paths.results_json, rows), (paths.analysis, result))
    ]
    changed.append(_write_text_if_changed(paths.results_csv, to_csv(rows)))
    figures_missing = not all((paths.root / f"{name}.png").exists() for name in expected_figures(rows, configs))
    if any(changed) or figures_missing:
        plots.draw_all(plots.load([paths.root]), paths.root)
    else:
        log(f"study already finished: {paths.root}")
    return paths.root, result


def expected_figures(rows, configs) -> list[str]:
    names = ["accuracy_vs_sparsity", "validation_curves", "cost_vs_accuracy"] if rows else []
    if plots.early_masks([r for r in rows if r.get("status") == "ok" and r.get("final_test_acc") is not None])[1]:
        names.append("early_vs_final")
    return names + (["fitness_over_generations"] if configs else [])


def table_row(record: dict[str, Any], root: Path) -> dict[str, Any]:
    """A results row: ``ROW_KEYS`` and the curves of a final record; its source relative to the study folder."""
    row = {k: record.get(k) for k in ROW_KEYS + CURVE_KEYS}
    row["source"] = os.path.relpath(record["source"], root)
    return row


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_KEYS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_if_changed(path: Path, obj: Any) -> bool:
    if path.exists() and read_json(path, path.name) == json.loads(json.dumps(obj)):
        return False
    write_json(path, obj)
    return True


def _write_text_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True


# --- GA vs Random Search ----------------------------------------------------------------------------------------------


def generations_for(cfg: RunConfig, budget: int) -> int:
    """Generations a run of ``cfg``'s algorithm gets so that it reaches ``budget`` evaluations (for the GA: with
    probability about 99.9%).

    Weedout evaluates exactly P - K a generation. A GA offspring is evaluated only when crossed (a pair, with
    probability cxpb) or mutated (mutpb), so a generation's count is random; its mean and variance follow from those
    probabilities, and the GA gets the fewest generations whose mean minus three standard deviations reaches the budget.
    """
    s = cfg.search
    offspring, need = s.population - s.survivors, budget - s.population
    if need <= 0:
        return 1
    if s.algorithm == "weedout":
        return 1 + math.ceil(need / offspring)
    cx, m = s.cxpb, s.mutpb
    if cx + m <= 0:
        raise ConfigError("--cxpb 0 with --mutpb 0 leaves every GA offspring unchanged: nothing is ever evaluated")
    pairs, single = divmod(offspring, 2)
    both = cx + (1 - cx) * m * m  # a pair: both evaluated when crossed, else each when mutated
    one = (1 - cx) * 2 * m * (1 - m)
    pair_mean = 2 * both + one
    mean = pairs * pair_mean + single * m
    var = pairs * (4 * both + one - pair_mean**2) + single * m * (1 - m)
    g = 1
    while g * mean - 3 * math.sqrt(g * var) < need:
        g += 1
    return 1 + g


def compare(
    base: RunConfig,
    *,
    algorithms: list[str],
    runs: int,
    final_cfg: FinalConfig | None = None,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Run ``runs`` seeds of each algorithm at Weedout's evaluation budget; (folder, comparison) written there.

    ``final_cfg``: also fully train each run's best ``final_cfg.masks`` masks (default 1) under its training seeds
    and test the algorithms' final test accuracy (a run's masks and seeds averaged: one value per run)."""
    from evo_sparse.runs.run import RunPaths, execute

    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or len(algorithms) < 2:
        raise ConfigError(f"--algorithms must name two or more of {', '.join(ALGORITHMS)}, not {','.join(algorithms)}")
    if runs < 1:
        raise ConfigError(f"--runs must be at least 1, not {runs}")
    base = base.validate()
    architecture(base.model)
    s = base.search
    budget = s.population + (s.generations - 1) * (s.population - s.survivors)
    configs = {}
    for alg in algorithms:
        cfg = base.updated({"search.algorithm": alg})
        cfg = cfg.updated({"search.generations": generations_for(cfg, budget)})
        configs |= {(alg, seed): cfg.updated({"seed": seed}).validate() for seed in range(runs)}
    key = {k: v for k, v in base.hashed_items().items() if k not in ("search.algorithm", "seed")}
    trained_key = [final_cfg.final_hash(), final_cfg.masks or 1, final_cfg.seeds] if final_cfg else []
    paths = StudyPaths(Path(base.runs_dir) / f"compare_{_hash([key, algorithms, runs, *trained_key])}")
    progress = StudyProgress(log, enabled=show_progress)
    progress.add(len(configs), sum(search_work(c) for c in configs.values()))
    entries, notes = [], []
    for (alg, seed), cfg in configs.items():
        was_done = _search_done(cfg)
        folder = execute(cfg, log=log, show_progress=show_progress)
        progress.finished(f"{alg} seed {seed}", search_work(cfg), computed=not was_done)
        journal = sorted(read_jsonl(RunPaths(folder).evaluations, repair=False), key=lambda r: (r["gen"], r["index"]))
        curve = analysis.best_so_far([r.get("fitness") if r.get("status") == "ok" else None for r in journal])[:budget]
        if len(curve) < budget:
            notes.append(f"{alg} seed {seed} made {len(curve)} of the {budget} evaluations of the budget")
        entries.append(
            {
                "algorithm": alg,
                "seed": seed,
                "run_dir": os.path.relpath(folder, paths.root),
                "generations": cfg.search.generations,
                "evaluations": len(curve),
                "best": curve[-1] if curve else None,
                "curve": curve,
            }
        )
    finals = {a: [e["best"] for e in entries if e["algorithm"] == a and e["best"] is not None] for a in algorithms}
    trained = _train_best(entries, paths.root, base, final_cfg, progress) if final_cfg else {}
    comparison = {
        "schema": SCHEMA_VERSION,
        "algorithms": algorithms,
        "budget_evaluations": budget,
        "train_images_per_eval": base.train.train_images // base.train.batch_size * base.train.batch_size,
        "summary": {a: analysis.summary(v) for a, v in finals.items()},
        "tests": analysis.compare_algorithms(finals),
        "bands": {a: analysis.curve_band([e["curve"] for e in entries if e["algorithm"] == a]) for a in algorithms},
        "runs": entries,
        "notes": notes,
        **(
            {
                "final": final_cfg.to_dict(),
                "final_summary": {a: analysis.summary(v) for a, v in trained.items()},
                "final_tests": analysis.compare_algorithms(trained),
            }
            if final_cfg
            else {}
        ),
        "run_config": base.to_dict(),
    }
    if _write_if_changed(paths.comparison, comparison) or not (paths.root / "best_so_far.png").exists():
        plots.draw_all(plots.load([paths.root]), paths.root)
    return paths.root, comparison


def _train_best(entries, root: Path, base: RunConfig, final_cfg: FinalConfig, progress) -> dict[str, list[float]]:
    """Fully train every run's best masks (``final.run_jobs``, no random ones, no dense); set each entry's
    ``final_test_acc`` (mean over its masks and training seeds); return those per algorithm."""
    fc = final_cfg.updated({"masks": final_cfg.masks or 1})
    per_run = {}
    for i, e in enumerate(entries):
        run_jobs = final.run_jobs(os.path.normpath(root / e["run_dir"]), fc, dense=False)
        per_run[i] = [j for j in run_jobs if j.kind == "found"]
    jobs = [j for js in per_run.values() for j in js]
    progress.add(len(jobs), sum(j.work for j in jobs))
    progress.skip_done(jobs)

    def on_done(job: final.Job, record: dict[str, Any]) -> None:
        run = f"{job.cfg.search.algorithm} seed {job.cfg.seed}"
        progress.trained(f"final {run} #{job.index} {job.seed_label}", job, record)

    records = final.execute(jobs, device=base.device, workers=base.workers, on_done=on_done)
    by_path = {j.path: r for j, r in zip(jobs, records, strict=True)}
    out: dict[str, list[float]] = {}
    for i, e in enumerate(entries):
        accs = [by_path[j.path]["final_test_acc"] for j in per_run[i]]
        accs = [a for a in accs if a is not None]
        e["final_test_acc"] = sum(accs) / len(accs) if accs else None
        if accs:
            out.setdefault(e["algorithm"], []).append(e["final_test_acc"])
    return out


def format_comparison(c: dict[str, Any]) -> str:
    """The comparison as a few lines: final best fitness per algorithm and the tests against the first."""
    images = c["budget_evaluations"] * c["train_images_per_eval"]
    lines = [
        f"budget: {c['budget_evaluations']} fitness evaluations ({images:,} training images) per run",
        f"{'algorithm':<10} {'runs':>4}  best fitness at budget (mean ± std)",
    ]
    lines += [_summary_line(alg, s) for alg, s in c["summary"].items()]
    lines += [_test_line(t) for t in c["tests"]]
    if "final_summary" in c:
        lines.append(f"{'algorithm':<10} {'runs':>4}  final test accuracy of the best masks, fully trained")
        lines += [_summary_line(alg, s) for alg, s in c["final_summary"].items()]
        lines += [_test_line(t, "final test accuracy: ") for t in c["final_tests"]]
    return "\n".join(lines + [f"note: {n}" for n in c["notes"]])


def _summary_line(alg: str, s: dict[str, Any]) -> str:
    spread = "" if s["std"] is None else f" ± {s['std']:.4f}"
    return f"{alg:<10} {s['n']:>4}  {'-' if s['mean'] is None else format(s['mean'], '.4f')}{spread}"


def _test_line(t: dict[str, Any], prefix: str = "") -> str:
    p = "n/a" if t["p_value"] is None else f"{t['p_value']:.3g}"
    d = "n/a" if t["cliffs_delta"] is None else f"{t['cliffs_delta']:+.2f}"
    note = f" ({t['note']})" if t["note"] else ""
    return f"{prefix}{t['algorithm']} vs {t['baseline']}: Mann-Whitney U p = {p}, Cliff's delta = {d}{note}"
