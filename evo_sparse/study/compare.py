"""GA vs Random Search (or any two algorithms) at an equal budget: ``compare``.

``compare``: N seeds of each algorithm, each given the same budget of fitness evaluations (hence of training images:
every evaluation trains on the same number); Weedout's count at ``--generations`` sets it. A GA run evaluates only
the offspring that changed, so it runs more generations and its journal is cut at the budget (rows in the order the
loop asked for them, so the cut does not depend on which worker finished first).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import ALGORITHMS, FinalConfig, RunConfig
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.paths import RunPaths, comparison_folder
from evo_sparse.foundations.progress import StudyProgress
from evo_sparse.foundations.storage import SCHEMA_VERSION, read_jsonl, write_json_if_changed
from evo_sparse.models.registry import architecture
from evo_sparse.stats import analysis
from evo_sparse.study import final, plots
from evo_sparse.study.paper import search_done, search_work


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


def plan(base: RunConfig, *, algorithms: list[str], runs: int) -> tuple[int, dict[tuple[str, int], RunConfig]]:
    """(the budget of evaluations, {(algorithm, seed): config}) of a comparison, checked; ConfigError otherwise."""
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
    return budget, configs


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
    from evo_sparse.runs.run import execute

    budget, configs = plan(base, algorithms=algorithms, runs=runs)
    key = {k: v for k, v in base.hashed_items().items() if k not in ("search.algorithm", "seed")}
    trained_key = [final_cfg.final_hash(), final_cfg.masks or 1, final_cfg.seeds] if final_cfg else []
    paths = comparison_folder(base.runs_dir, [key, algorithms, runs, *trained_key])
    progress = StudyProgress(log, enabled=show_progress)
    progress.add(len(configs), sum(search_work(c) for c in configs.values()))
    entries, notes = [], []
    for (alg, seed), cfg in configs.items():
        was_done = search_done(cfg)
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
        "tests": analysis.compare_algorithms(finals, by_seed=_by_seed(entries, "best")),
        "bands": {a: analysis.curve_band([e["curve"] for e in entries if e["algorithm"] == a]) for a in algorithms},
        "runs": entries,
        "notes": notes,
        **(
            {
                "final": final_cfg.to_dict(),
                "final_summary": {a: analysis.summary(v) for a, v in trained.items()},
                "final_tests": analysis.compare_algorithms(trained, by_seed=_by_seed(entries, "final_test_acc")),
            }
            if final_cfg
            else {}
        ),
        "run_config": base.to_dict(),
    }
    if write_json_if_changed(paths.comparison, comparison) or not (paths.root / "best_so_far.png").exists():
        plots.draw_all(plots.load([paths.root]), paths.root)
    return paths.root, comparison


def _by_seed(entries: list[dict[str, Any]], key: str) -> dict[str, dict[int, float]]:
    """{algorithm: {run seed: entry[key]}} over the entries that have a value, for the tests paired by seed."""
    out: dict[str, dict[int, float]] = {}
    for e in entries:
        if e.get(key) is not None:
            out.setdefault(e["algorithm"], {})[e["seed"]] = e[key]
    return out


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

    records = final.execute(jobs, where=base, on_done=on_done, log=progress.log, tensorboard=base.tensorboard)
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
    pair = t.get("paired") or {}  # a comparison.json from before pairing has none
    paired = "n/a" if pair.get("p_value") is None else f"{pair['p_value']:.3g}"
    return (
        f"{prefix}{t['algorithm']} vs {t['baseline']}: Mann-Whitney U p = {p}, Cliff's delta = {d}, "
        f"paired by seed Wilcoxon p = {paired} (n={pair.get('n', 0)}){note}"
    )
