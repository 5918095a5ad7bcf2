"""The paper's figures: pure functions from run, study and comparison folders to PNG + PDF files. They never train.

Every figure is written as ``<name>.png``, ``<name>.pdf`` and ``<name>.json``; the JSON sidecar names the folders it
was drawn from and holds the plotted numbers. Figures are drawn on matplotlib ``Figure`` objects (no pyplot state, no
display needed); PDFs carry no creation date, so the same data gives the same files.

- ``accuracy_vs_sparsity``: final test accuracy vs sparsity, dense / random / found, mean ± std over masks.
- ``early_vs_final``: early fitness vs final test accuracy per mask, one panel per sparsity, Kendall τ in the title;
  the early fitness is the one ``analysis.early_measure`` picks (held-out replicate, else as the search measured it),
  named in the axis label and in the sidecar's ``early_measure``.
- ``fitness_over_generations``: best and mean fitness per generation, per algorithm and sparsity (mean over seeds).
- ``validation_curves``: validation accuracy per epoch of full training, found vs random (mean ± std).
- ``cost_vs_accuracy``: parameters and FLOPs (multiply-accumulates) vs final test accuracy.
- ``best_so_far``: GA vs Random Search, best fitness so far vs evaluations, mean with a 95% band (``compare``).
- ``fidelity_reliability``: reliability of a fitness (ICC) vs seconds per training, per recipe (``fidelity``).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evo_sparse.foundations.errors import EvoSparseError
from evo_sparse.foundations.paths import (
    COMPARISON,
    FIDELITY,
    RECIPE,
    RESULTS,
    STUDY,
    RunPaths,
    final_folders,
    is_dense_folder,
)
from evo_sparse.foundations.storage import read_json, write_json
from evo_sparse.stats import analysis

FIGURES = (
    "accuracy_vs_sparsity",
    "early_vs_final",
    "fitness_over_generations",
    "validation_curves",
    "cost_vs_accuracy",
    "best_so_far",
)
EARLY_LABELS = {
    "heldout": "early fitness, held-out replicate",
    "search": "early fitness, as the search measured it",
}
COLORS = {"found": "tab:red", "random": "tab:blue", "dense": "black", "weedout": "tab:blue", "ga": "tab:orange"}


@dataclass
class Material:
    """What a set of folders holds: final-training rows, search runs (their summaries) and GA-vs-RS comparisons."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    fidelity: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (folder, ``fidelity`` report)


def load(folders: list[str | Path]) -> Material:
    """Read study, comparison, run and ``final_<hash>`` folders; EvoSparseError for a folder that is none of them."""
    from evo_sparse.runs import run
    from evo_sparse.study import final

    m = Material()
    for folder in map(Path, folders):
        if (folder / RESULTS).exists():  # a study: paths inside are relative to its folder
            rows = read_json(folder / RESULTS, "study results")
            m.rows += [r | {"source": os.path.normpath(folder / r["source"])} for r in rows]
            study = read_json(folder / STUDY, "study description")
            m.runs += [run.summarize(os.path.normpath(folder / r)) for r in study["runs"]]
        elif (folder / COMPARISON).exists():
            comparison = read_json(folder / COMPARISON, "comparison")
            for r in comparison["runs"]:
                r["run_dir"] = os.path.normpath(folder / r["run_dir"])
            m.comparisons.append(comparison)
            m.runs += [run.summarize(r["run_dir"]) for r in comparison["runs"]]
        elif (folder / FIDELITY).exists():
            m.fidelity.append((str(folder), read_json(folder / FIDELITY, "fidelity report")))
        elif (folder / RECIPE).exists():
            m.rows += final.read_results(folder)
        elif RunPaths.holds_run(folder):
            m.runs.append(run.summarize(folder))
            m.rows += final.run_results(folder)
        elif is_dense_folder(folder):
            m.rows += [r for f in final_folders(folder) for r in final.read_results(f)]
        else:
            raise EvoSparseError(
                f"{folder} is not a study, comparison, fidelity, run or final-training folder; give a folder that "
                "`evo-sparse paper`, `compare`, `fidelity`, `run` or `final` printed"
            )
    return m


def draw_all(material: Material, out: str | Path) -> list[Path]:
    """Every figure the material allows, into ``out``; the written PNG paths (EvoSparseError if none can be drawn)."""
    out = Path(out)
    ok = [r for r in material.rows if r.get("status") == "ok" and r.get("final_test_acc") is not None]
    written = []
    if ok:
        written += [accuracy_vs_sparsity(ok, out), validation_curves(ok, out), cost_vs_accuracy(ok, out)]
        if early_masks(ok)[1]:
            written.append(early_vs_final(ok, out))
    if any(r["logbook"] for r in material.runs):
        written.append(fitness_over_generations(material.runs, out))
    for c in material.comparisons:
        written.append(best_so_far(c, out))
    for folder, report in material.fidelity:
        written.append(fidelity(report, out, source=folder))
    if not written:
        raise EvoSparseError("nothing to plot: no finished final training, search generation or comparison found")
    return written


def _save(fig: Figure, out: Path, name: str, sources: list[str], data: Any, **meta: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=150)
    fig.savefig(out / f"{name}.pdf", metadata={"CreationDate": None})
    write_json(out / f"{name}.json", {"figure": name, "sources": sorted(set(sources)), **meta, "data": data})
    return out / f"{name}.png"


def _sources(rows) -> list[str]:
    return [str(r.get("source")) for r in rows]


def accuracy_vs_sparsity(rows: list[dict[str, Any]], out: Path) -> Path:
    """Final test accuracy vs sparsity for dense, random and found networks (mean ± std over masks)."""
    masks = analysis.masks_of(rows)
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    data = {}
    for kind in ("dense", "random", "found"):
        by_s = defaultdict(list)
        for m in masks:
            if m["kind"] == kind:
                by_s[m["sparsity"]].append(m["final_test_acc"])
        if not by_s:
            continue
        xs = sorted(by_s)
        mean = [float(np.mean(by_s[s])) for s in xs]
        std = [float(np.std(by_s[s], ddof=1)) if len(by_s[s]) > 1 else 0.0 for s in xs]
        n = [len(by_s[s]) for s in xs]
        data[kind] = {"sparsity": xs, "mean": mean, "std": std, "n": n}
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, color=COLORS[kind], label=kind)
        if kind == "dense":
            ax.axhline(mean[0], color=COLORS[kind], lw=0.8, ls=":")
    ax.set(xlabel="node sparsity (fraction of channels removed)", ylabel="final test accuracy")
    ax.set_title("Final accuracy vs sparsity (mean ± std over masks)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out, "accuracy_vs_sparsity", _sources(rows), data)


def early_masks(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(the early measure ``analysis.early_measure`` picks, the found and random masks that have it)."""
    masks = analysis.masks_of(rows)
    measure = analysis.early_measure(masks)
    key = analysis.EARLY_KEYS[measure]
    return measure, [m for m in masks if m["kind"] != "dense" and m[key] is not None]


def early_vs_final(rows: list[dict[str, Any]], out: Path) -> Path:
    """Early fitness vs final test accuracy per mask, a panel per sparsity with Kendall τ; the early fitness is the
    held-out replicate's when every mask has one, else the search's (the axis label and ``early_measure`` say)."""
    measure, masks = early_masks(rows)
    key = analysis.EARLY_KEYS[measure]
    levels = sorted({m["sparsity"] for m in masks})
    fig = Figure(figsize=(3.4 * len(levels), 3.3))
    axes = np.atleast_1d(fig.subplots(1, len(levels), squeeze=False)[0])
    data = []
    for ax, s in zip(axes, levels):
        here = [m for m in masks if m["sparsity"] == s]
        corr = analysis.rank_correlation([m[key] for m in here], [m["final_test_acc"] for m in here])
        for kind in ("random", "found"):
            pts = [m for m in here if m["kind"] == kind]
            ax.scatter(
                [m[key] for m in pts],
                [m["final_test_acc"] for m in pts],
                s=16,
                color=COLORS[kind],
                label=kind,
                alpha=0.8,
            )
        tau = corr["kendall_tau"]
        ax.set_title(f"sparsity {s:g}: τ = {'n/a' if tau is None else f'{tau:+.2f}'} (n={corr['n']})", fontsize=9)
        ax.set_xlabel(f"{EARLY_LABELS[measure]}\n(validation accuracy)", fontsize=9)
        ax.set_ylabel("final test accuracy")
        keys = ("kind", "seed", "index", "early_fitness", "early_fitness_heldout", "final_test_acc")
        data.append(
            {
                "sparsity": s,
                "early_measure": measure,
                "kendall_tau": tau,
                "points": [{k: m[k] for k in keys} for m in here],
            }
        )
    axes[0].legend(fontsize=8)
    meta = {"early_measure": measure, "early_label": EARLY_LABELS[measure]}
    return _save(fig, out, "early_vs_final", _sources(rows), data, **meta)


def fitness_over_generations(summaries: list[dict[str, Any]], out: Path) -> Path:
    """Best (solid) and population mean (faint) fitness per generation, averaged over the seeds of each setting
    (algorithm, sparsity, population, generations); a run given twice counts once."""
    groups = defaultdict(list)
    for s in {s["run_dir"]: s for s in summaries if s["logbook"]}.values():
        groups[(s["algorithm"], s["sparsity"], s.get("population_size"), s.get("generations"))].append(s)
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    data = []
    styles = ["-", "-.", ":", (0, (5, 1))]
    for i, ((alg, sparsity, pop, generations), runs) in enumerate(sorted(groups.items(), key=str)):
        n = min(len(r["logbook"]) for r in runs)
        best = [_mean([r["logbook"][g]["max"] for r in runs]) for g in range(n)]
        avg = [_mean([r["logbook"][g]["avg"] for r in runs]) for g in range(n)]
        gens = list(range(1, n + 1))
        color = COLORS.get(alg, f"C{i}")
        label = f"{alg} s={sparsity:g} P={pop} G={generations} (n={len(runs)})"
        ax.plot(gens, best, color=color, ls=styles[i % len(styles)], marker="o", ms=3, label=f"{label} best")
        ax.plot(gens, avg, color=color, ls=styles[i % len(styles)], alpha=0.45, label=f"{label} mean")
        data.append(
            {
                "algorithm": alg,
                "sparsity": sparsity,
                "population": pop,
                "generations": generations,
                "runs": len(runs),
                "best": best,
                "mean": avg,
            }
        )
    ax.set(xlabel="generation", ylabel="fitness (early validation accuracy)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Fitness over generations (mean over seeds; faint: population mean)", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, out, "fitness_over_generations", [s["run_dir"] for s in summaries], data)


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def validation_curves(rows: list[dict[str, Any]], out: Path) -> Path:
    """Validation accuracy per epoch of full training, found vs random (and dense), mean ± std over trainings."""
    levels = sorted({r["sparsity"] for r in rows if r["kind"] != "dense"}) or [0.0]
    fig = Figure(figsize=(3.4 * len(levels), 3.3))
    axes = fig.subplots(1, len(levels), squeeze=False)[0]
    data = []
    for ax, s in zip(axes, levels):
        for kind in ("dense", "random", "found"):
            curves = [r["val_acc"] for r in rows if r["kind"] == kind and (kind == "dense" or r["sparsity"] == s)]
            if not curves:
                continue
            n = min(map(len, curves))
            arr = np.array([c[:n] for c in curves], float)
            mean, std = arr.mean(0), arr.std(0)
            epochs = np.arange(1, n + 1)
            ax.plot(epochs, mean, color=COLORS[kind], label=f"{kind} (n={len(curves)})")
            ax.fill_between(epochs, mean - std, mean + std, color=COLORS[kind], alpha=0.15, lw=0)
            data.append({"sparsity": s, "kind": kind, "n": len(curves), "mean": mean.tolist(), "std": std.tolist()})
        ax.set(xlabel="epoch", ylabel="validation accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"sparsity {s:g}", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, out, "validation_curves", _sources(rows), data)


def cost_vs_accuracy(rows: list[dict[str, Any]], out: Path) -> Path:
    """Parameters and FLOPs (multiply-accumulates per image) vs final test accuracy, one point per mask."""
    cost = {analysis.mask_key(r): (r["params"], r["flops"]) for r in rows}
    masks = analysis.masks_of(rows)
    fig = Figure(figsize=(8, 3.4))
    axes = fig.subplots(1, 2)
    data = []
    for ax, i, label in ((axes[0], 0, "parameters"), (axes[1], 1, "FLOPs (multiply-accumulates per image)")):
        for kind in ("dense", "random", "found"):
            pts = [m for m in masks if m["kind"] == kind]
            if pts:
                xs = [cost[m["key"]][i] for m in pts]
                ax.scatter(xs, [m["final_test_acc"] for m in pts], s=16, color=COLORS[kind], label=kind, alpha=0.8)
        ax.set_xscale("log")
        ax.set(xlabel=label, ylabel="final test accuracy")
    for m in masks:
        params, flops = cost[m["key"]]
        data.append(
            {k: m[k] for k in ("sparsity", "seed", "kind", "index", "final_test_acc")}
            | {"params": params, "flops": flops}
        )
    axes[0].legend(fontsize=8)
    return _save(fig, out, "cost_vs_accuracy", _sources(rows), data)


def best_so_far(comparison: dict[str, Any], out: Path) -> Path:
    """Best fitness so far vs fitness evaluations, per algorithm: mean over runs with a 95% t-interval band."""
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for alg, band in comparison["bands"].items():
        x = np.arange(1, len(band["mean"]) + 1)
        mean = np.array([math.nan if v is None else v for v in band["mean"]], float)
        low = np.array([math.nan if v is None else v for v in band["low"]], float)
        high = np.array([math.nan if v is None else v for v in band["high"]], float)
        n = sum(r["algorithm"] == alg for r in comparison["runs"])
        ax.plot(x, mean, color=COLORS.get(alg), label=f"{alg} (n={n})")
        ax.fill_between(x, low, high, color=COLORS.get(alg), alpha=0.2, lw=0)
    ax.set(
        xlabel=f"fitness evaluations ({comparison['train_images_per_eval']:,} training images each)",
        ylabel="best fitness so far",
    )
    ax.set_title("GA vs Random Search at an equal budget (mean, 95% CI)", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return _save(fig, out, "best_so_far", [r["run_dir"] for r in comparison["runs"]], comparison["bands"])


def fidelity(report: dict[str, Any], out: Path, *, source: str | None = None) -> Path:
    """Reliability of one training (ICC(1), with its 95% CI; solid) and of the mean of the study's R replicates
    (Spearman–Brown, floored at 0; dashed) vs the training budget, a line per sampling and learning rate; with a
    reference, a second panel of Kendall τ (95% CI) against the longer training. The budget, not the seconds, is on
    the x axis: seconds measured on a shared machine at different times are not comparable (they are in the JSON)."""
    entries = [e for e in report["settings"] if e.get("icc") is not None]
    with_ref = any((e.get("reference") or {}).get("kendall_tau") is not None for e in entries)
    fig = Figure(figsize=(10.5 if with_ref else 5.5, 4.2))
    axes = fig.subplots(1, 2 if with_ref else 1, squeeze=False)[0]
    lines: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        lines[(e["sampling"], e["lr"])].append(e)
    budgets = sorted({e["train_images"] for e in entries})
    for n, ((sampling, lr), es) in enumerate(sorted(lines.items())):
        es = sorted(es, key=lambda e: e["train_images"])
        dodge = 1.04 ** (n - (len(lines) - 1) / 2)  # side by side, so that the error bars do not hide each other
        x = [e["train_images"] * dodge for e in es]
        style = {"color": f"C{n}", "marker": "o" if sampling == "global" else "s", "capsize": 3}
        label = f"{sampling}, lr {lr:g}"
        icc = [e["icc"] for e in es]
        err = _bars(icc, [e["icc_ci"] for e in es])
        axes[0].errorbar(x, icc, yerr=err, label=label, **style)
        mean_rel = [max(0.0, e["reliability_of_mean"] or 0.0) for e in es]
        axes[0].plot(x, mean_rel, color=style["color"], ls="--", alpha=0.5)
        if with_ref:
            ok = [
                (xi, e["reference"])
                for xi, e in zip(x, es)
                if (e.get("reference") or {}).get("kendall_tau") is not None
            ]
            taus = [r["kendall_tau"] for _, r in ok]
            cis = [r["kendall_tau_ci"] or [t, t] for (_, r), t in zip(ok, taus)]
            err = _bars(taus, cis)
            axes[1].errorbar([xi for xi, _ in ok], taus, yerr=err, label=label, **style)
    r, m = report["replicates"], report["masks"]
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("training images per training (the budget)")
    axes[0].axhline(report["target"], color="grey", lw=0.8, ls=":")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylim(min(-0.35, min(e["icc_ci"][0] for e in entries) - 0.05), 1.0)
    axes[0].set_ylabel(f"reliability: ICC(1) of one training (solid)\nmean of {r} replicates (dashed)")
    axes[0].set_title(f"fitness reliability, {m} masks x {r} replicates (95% CI)", fontsize=10)
    axes[-1].legend(fontsize=8, loc="upper right" if with_ref else "lower left")
    if with_ref:
        axes[1].axhline(0, color="grey", lw=0.8)
        axes[1].set_ylabel(f"Kendall τ with the {report['reference_epochs']}-epoch test accuracy")
        axes[1].set_title(f"does fitness rank like longer training? n = {m} masks (95% CI)", fontsize=10)
    data = [{k: e.get(k) for k in ("key", "sampling", "train_images", "lr", "icc", "icc_ci", "reliability_of_mean",
                                   "seconds_per_training", "reference")} for e in entries]  # fmt: skip
    return _save(fig, Path(out), "fidelity_reliability", [source or str(out)], data)


def _bars(values: list[float], cis: list) -> list[list[float]]:
    """Error bars (below, above) from 95% intervals; never negative, as a point estimate may lie a rounding step
    outside its bootstrap interval (a Kendall tau of -0.9999999999999999 with the interval [-1, -1])."""
    return [[max(0.0, v - c[0]) for v, c in zip(values, cis)], [max(0.0, c[1] - v) for v, c in zip(values, cis)]]
