"""Any search algorithms against each other at an equal budget of trainings: ``compare``.

``compare``: N seeds of each algorithm, the same seeds for all (so the same parent initialization, data order and,
for the generational ones, generation 0), each given the same budget of trainings: Weedout's count at
``--generations`` (P + (G-1)(P-K) brief trainings). A training of another length (a multi-fidelity plug-in's) counts
its share, and a mask an algorithm scored before costs nothing (``runs.journal``). Weedout runs as the plain run of
these settings; every other algorithm runs with ``--budget`` set, so it stops when the budget is spent: its hall of
fame, hence what ``--final-train`` trains, holds only masks scored within the budget. An algorithm is a built-in, an
installed plug-in's name or ``package.module:name``, with its options in brackets: ``mypkg.search:Search[eta=3]``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import FinalConfig, RunConfig
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.paths import RunPaths, comparison_folder
from evo_sparse.foundations.progress import StudyProgress
from evo_sparse.foundations.storage import SCHEMA_VERSION, read_jsonl, write_json_if_changed
from evo_sparse.models.registry import architecture
from evo_sparse.runs.journal import cost
from evo_sparse.search import plugins
from evo_sparse.stats import analysis
from evo_sparse.stats.reference import best_of_n_sd, expected_best_of_n
from evo_sparse.study import final, plot_style, plots
from evo_sparse.study.paper import search_done, search_work

# a generational algorithm other than Weedout gets this many times the generations it would need if every offspring
# were trained; the budget, not this cap, ends it
GENERATION_SLACK = 4


def parse_algorithms(text: str) -> list[tuple[str, str]]:
    """``"weedout,pkg.mod:Search[eta=3,rungs=2]"`` as ``[("weedout", ""), ("pkg.mod:Search", "eta=3,rungs=2")]``;
    ConfigError naming the entry as written when one is not ``name`` or ``name[key=value,...]``."""
    entries, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    entries.append(current)
    out = []
    for entry in entries:
        m = re.fullmatch(r"\s*([^,\[\]\s]+)\s*(?:\[([^\[\]]*)\])?\s*", entry)
        if not m:
            raise ConfigError(
                f"--algorithms: cannot read {entry.strip()!r}; write each algorithm as name or name[key=value,...]"
            )
        out.append((m.group(1), (m.group(2) or "").strip()))
    return out


def label(name: str, options: str) -> str:
    """How an algorithm (with its options) is named in a comparison."""
    return f"{name}[{options}]" if options else name


def generations_for(cfg: RunConfig, budget: float) -> int:
    """Generations a generational run of ``cfg`` may take to spend ``budget`` trainings: Weedout's own count for
    Weedout, ``GENERATION_SLACK`` times the count at which every offspring is trained for the others."""
    s = cfg.search
    need = math.ceil(max(0.0, budget - s.population) / (s.population - s.survivors))
    return 1 + need * (1 if s.algorithm == "weedout" else GENERATION_SLACK)


def plan(
    base: RunConfig, *, algorithms: list[str] | list[tuple[str, str]], runs: int
) -> tuple[int, dict[tuple[str, int], RunConfig]]:
    """(the budget of trainings, {(algorithm label, seed): config}) of a comparison, checked; ConfigError (one line)
    otherwise, a plug-in that cannot be imported or an option it refuses included."""
    pairs = [(a, "") if isinstance(a, str) else a for a in algorithms]
    labels = [label(*p) for p in pairs]
    if len(pairs) < 2 or len(set(labels)) < len(labels):
        raise ConfigError(f"--algorithms must name two or more different algorithms, not {','.join(labels)}")
    if runs < 1:
        raise ConfigError(f"--runs must be at least 1, not {runs}")
    if base.search.algo_opts:
        raise ConfigError("--algo-opt is for run; in compare give an algorithm's options as name[key=value,...]")
    base = base.validate()
    architecture(base.model)
    budget = base.search.weedout_trainings
    configs = {}
    for (name, options), tag in zip(pairs, labels):
        cfg = base.updated({"search.algorithm": name, "search.algo_opts": options, "search.algorithm_source": ""})
        try:
            cfg, algorithm, _ = plugins.identify(cfg)
        except ConfigError as exc:
            raise ConfigError(f"--algorithms {tag}: {exc}") from None
        if name == "ga" and cfg.search.cxpb + cfg.search.mutpb <= 0:
            raise ConfigError("--cxpb 0 with --mutpb 0 leaves every GA offspring unchanged: nothing is ever evaluated")
        if name != "weedout":
            changes = {"search.budget": float(budget)}
            if algorithm.kind != plugins.ASK_TELL:
                changes["search.generations"] = generations_for(cfg, budget)
            cfg = cfg.updated(changes)
        configs |= {(tag, seed): cfg.updated({"seed": seed}).validate() for seed in range(runs)}
    return budget, configs


def compare(
    base: RunConfig,
    *,
    algorithms: list[str] | list[tuple[str, str]],
    runs: int,
    final_cfg: FinalConfig | None = None,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Run ``runs`` seeds of each algorithm at Weedout's budget of trainings; (folder, comparison) written there.

    ``final_cfg``: also fully train each run's best ``final_cfg.masks`` masks (default 1) under its training seeds
    and test the algorithms' final test accuracy (a run's masks and seeds averaged: one value per run)."""
    from evo_sparse.runs.run import execute

    budget, configs = plan(base, algorithms=algorithms, runs=runs)
    names = list(dict.fromkeys(alg for alg, _ in configs))
    key = {k: v for k, v in base.hashed_items().items() if k not in ("search.algorithm", "seed")}
    sources = {alg: cfg.search.algorithm_source for (alg, _), cfg in configs.items()}
    identities = [f"{a} ({sources[a]})" if sources[a] else a for a in names]  # built-ins: the names, as before
    trained_key = [final_cfg.final_hash(), final_cfg.masks or 1, final_cfg.seeds] if final_cfg else []
    paths = comparison_folder(base.runs_dir, [key, identities, runs, *trained_key])
    progress = StudyProgress(log, enabled=show_progress)
    progress.add(len(configs), sum(search_work(c) for c in configs.values()))
    entries, notes, generation_0 = [], [], []
    for (alg, seed), cfg in configs.items():
        was_done = search_done(cfg)
        folder = execute(cfg, log=log, show_progress=show_progress)
        progress.finished(f"{alg} seed {seed}", search_work(cfg), computed=not was_done)
        journal = sorted(read_jsonl(RunPaths(folder).evaluations, repair=False), key=lambda r: (r["gen"], r["index"]))
        curve, spent = curve_by_trainings(journal, budget)
        if spent < budget - 1e-6:
            notes.append(f"{alg} seed {seed} spent {spent:g} of the {budget} trainings of the budget")
        if cfg.search.algorithm == "weedout":
            generation_0 += [r.get("fitness") for r in journal if r["gen"] == 0 and r.get("status") == "ok"]
        entries.append(
            {
                "algorithm": alg,
                "seed": seed,
                "run_dir": os.path.relpath(folder, paths.root),
                "generations": cfg.search.generations,  # the most it may run; a budget can stop it sooner
                "generations_run": 1 + max((r["gen"] for r in journal), default=-1),
                "evaluations": len(journal),
                "trainings": round(spent, 6),
                "cache_hits": sum(r.get("cache") is not None for r in journal),
                "best": curve[-1] if curve else None,
                "curve": curve,
            }
        )
    finals = {a: [e["best"] for e in entries if e["algorithm"] == a and e["best"] is not None] for a in names}
    trained = _train_best(entries, paths.root, base, final_cfg, progress) if final_cfg else {}
    comparison = {
        "schema": SCHEMA_VERSION,
        "algorithms": names,
        "sources": {a: s for a, s in sources.items() if s},
        "budget_trainings": budget,
        "train_images_per_eval": base.train.replicates
        * (base.train.train_images // base.train.batch_size * base.train.batch_size),
        "replicates": base.train.replicates,
        "summary": {a: analysis.summary(v) for a, v in finals.items()},
        "tests": analysis.compare_algorithms(finals, by_seed=_by_seed(entries, "best")),
        "bands": {a: analysis.curve_band([e["curve"] for e in entries if e["algorithm"] == a]) for a in names},
        "random_reference": _reference(generation_0, budget),
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


def curve_by_trainings(journal: list[dict[str, Any]], budget: int) -> tuple[list[float | None], float]:
    """(best fitness so far after 1, 2, ..., ``budget`` trainings, the trainings the journal spent) of a run's rows in
    the order the loop asked for them: a row counts once its cumulative cost is within the mark; only fitness from
    trainings of the run's own length counts (a multi-fidelity plug-in's shorter trainings only cost)."""
    curve: list[float | None] = []
    best, spent = None, 0.0
    for row in journal:
        spent += cost(row)
        while len(curve) < budget and len(curve) + 1 < spent - 1e-9:
            curve.append(best)  # marks this row's cost passes before it finishes
        if row.get("status") == "ok" and row.get("fidelity") is None and row.get("fitness") is not None:
            best = row["fitness"] if best is None else max(best, row["fitness"])
        if len(curve) >= budget:
            break
    while len(curve) < min(budget, math.floor(spent + 1e-9)):
        curve.append(best)
    return curve, spent


def _reference(values: list[float], budget: int) -> dict[str, Any] | None:
    """Pure Random Search's expected best after 1..budget trainings, from Weedout's pooled generation 0."""
    if not values:
        return None
    return {
        "source": "generation 0 of every Weedout run, pooled: the fitness of random masks",
        "values": len(values),
        "expected_best": expected_best_of_n(values, budget),
        "sd_of_one_run": best_of_n_sd(values, budget),
    }


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
    budget = c.get("budget_trainings", c.get("budget_evaluations"))  # files before budgets in trainings
    images = budget * c["train_images_per_eval"]
    width = max(10, *(len(a) for a in c["summary"]))
    lines = [
        f"budget: {budget} fitness evaluations of {plot_style.evaluation_text(c)} ({images:,} training images) per run",
        f"{'algorithm':<{width}} {'runs':>4}  best fitness at budget (mean ± std)",
    ]
    reference = c.get("random_reference")
    if reference and reference["expected_best"]:
        lines.append(
            f"{'(random)':<{width}}       {reference['expected_best'][-1]:.4f}: expected best of {budget} random masks "
            f"(from {reference['values']} generation-0 values)"
        )
    lines += [_summary_line(alg, s, width) for alg, s in c["summary"].items()]
    lines += [_test_line(t) for t in c["tests"]]
    if "final_summary" in c:
        lines.append(f"{'algorithm':<{width}} {'runs':>4}  final test accuracy of the best masks, fully trained")
        lines += [_summary_line(alg, s, width) for alg, s in c["final_summary"].items()]
        lines += [_test_line(t, "final test accuracy: ") for t in c["final_tests"]]
    return "\n".join(lines + [f"note: {n}" for n in c["notes"]])


def _summary_line(alg: str, s: dict[str, Any], width: int = 10) -> str:
    spread = "" if s["std"] is None else f" ± {s['std']:.4f}"
    return f"{alg:<{width}} {s['n']:>4}  {'-' if s['mean'] is None else format(s['mean'], '.4f')}{spread}"


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
