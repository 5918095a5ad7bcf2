"""Figures of final-training rows, one point per mask (its training seeds averaged, ``analysis.masks_of``).

``accuracy_vs_sparsity`` (masks as dodged points, mean with its 95% t-interval), ``early_vs_final`` (a panel per
sparsity, Kendall τ with its CI per kind and pooled), ``validation_curves`` (mean over masks with the 95% t-interval
of that mean) and ``cost_vs_accuracy``. Every title or caption gives n and the final training's length; the sparsity
axis shows node sparsity with parameter sparsity beside it (``plot_style``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evo_sparse.stats import analysis
from evo_sparse.study.plot_style import (
    bars,
    color,
    count_text,
    dodge,
    epochs_text,
    legend_in_headroom,
    marker,
    mean_ci,
    nan_array,
    param_sparsity,
    save,
    side_by_side,
    sources_of,
    sparsity_label,
)

KINDS = ("dense", "random", "found")
SLOT = {"dense": 0.0, "random": -0.2, "found": 0.2}  # where a kind sits beside its sparsity's tick
EARLY_LABELS = {
    "heldout": "early fitness, held-out replicate",
    "search": "early fitness, as the search measured it",
}


def accuracy_vs_sparsity(rows: list[dict[str, Any]], out: Path) -> Path:
    """Final test accuracy per mask (hollow points, dodged side by side) and per kind and sparsity the mean with its
    95% t-interval over masks (filled, with bars); the dense mean as a dotted line."""
    masks = analysis.masks_of(rows)
    fractions = param_sparsity(rows)
    levels = sorted({m["sparsity"] for m in masks})
    fig = Figure(figsize=(max(5.5, 1.5 * len(levels) + 2.5), 4.2))
    ax = fig.subplots()
    data, counts = {}, []
    for kind in KINDS:
        groups = {s: [m["final_test_acc"] for m in masks if m["kind"] == kind and m["sparsity"] == s] for s in levels}
        groups = {s: accs for s, accs in groups.items() if accs}
        if not groups:
            continue
        entry: dict[str, list] = {k: [] for k in ("sparsity", "mean", "std", "low", "high", "n", "points")}
        for s, accs in groups.items():
            x = levels.index(s) + SLOT[kind]
            ax.scatter(x - 0.05 + dodge(len(accs), 0.12), accs, s=14, marker=marker(kind), facecolors="none",
                       edgecolors=color(kind), linewidths=0.8, alpha=0.8)  # fmt: skip
            mean, low, high = mean_ci(accs)
            ax.errorbar(x + 0.07, mean, yerr=[[mean - low], [high - mean]], marker=marker(kind), color=color(kind),
                        ms=6, capsize=3, mec="white", mew=0.6)  # fmt: skip
            std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
            for k, v in zip(entry, (s, mean, std, low, high, len(accs), accs)):
                entry[k].append(v)
        entry["param_sparsity"] = [fractions.get(s) for s in entry["sparsity"]]
        data[kind] = entry
        counts += entry["n"] if kind != "dense" else []
        ax.scatter([], [], marker=marker(kind), color=color(kind), label=f"{kind} (n={count_text(entry['n'])} masks)")
        if kind == "dense":
            ax.axhline(entry["mean"][0], color=color(kind), lw=0.8, ls=":")
    ax.set_xticks(range(len(levels)), [sparsity_label(s, fractions, "\n") for s in levels])
    known = any(fractions.get(s) is not None for s in levels if s)  # parameter sparsity needs the dense parent
    xlabel = "node sparsity (parameter sparsity)" if known else "node sparsity (no dense network: parameters unknown)"
    ax.set(xlabel=xlabel, ylabel="final test accuracy")
    seeds = count_text(len(m["test_accs"]) for m in masks)
    ax.set_title(
        f"Final test accuracy after {epochs_text(rows)} of training, n={count_text(counts)} masks per kind and "
        f"sparsity (legend)\nhollow: one mask (mean of its {seeds} training seeds), side by side; filled: mean with "
        "95% t-CI",
        fontsize=8,
    )
    legend_in_headroom(ax)
    return save(fig, out, "accuracy_vs_sparsity", sources_of(rows), data)


def early_masks(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(the early measure ``analysis.early_measure`` picks, the found and random masks that have it)."""
    masks = analysis.masks_of(rows)
    measure = analysis.early_measure(masks)
    key = analysis.EARLY_KEYS[measure]
    return measure, [m for m in masks if m["kind"] != "dense" and m[key] is not None]


def tau_text(corr: dict[str, Any]) -> str:
    """``"+0.20 [-0.31, +0.62]"``: Kendall τ with its 95% CI, from ``analysis.rank_correlation``."""
    tau, ci = corr["kendall_tau"], corr["kendall_tau_ci"]
    if tau is None:
        return "n/a"
    return f"{tau:+.2f}" + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")


def early_vs_final(
    rows: list[dict[str, Any]], out: Path, *, brief_images: list[int] | None = None, replicates: list[int] | None = None
) -> Path:
    """Early fitness vs final test accuracy per mask, a panel per sparsity with Kendall τ and its 95% bootstrap CI
    within each kind (the legend; selection restricts the found masks' range, so the pooled τ, in the title, partly
    measures found vs random), the numbers of ``analysis.analyse`` (same bootstrap, same CIs). The early fitness is the
    held-out replicate's when every mask has one, else the search's (the axis label and ``early_measure`` say);
    ``brief_images``: the training images of one brief training and ``replicates``: the trainings a search's fitness
    averages, for the caption (the held-out measure is one training)."""
    measure, masks = early_masks(rows)
    key = analysis.EARLY_KEYS[measure]
    fractions = param_sparsity(rows)
    levels = sorted({m["sparsity"] for m in masks})
    fig = Figure(figsize=(3.8 * len(levels), 4.0))
    axes = np.atleast_1d(fig.subplots(1, len(levels), squeeze=False)[0])
    data = []
    for ax, s in zip(axes, levels):
        here = [m for kind in ("found", "random") for m in masks if m["sparsity"] == s and m["kind"] == kind]
        corr = analysis.rank_correlation([m[key] for m in here], [m["final_test_acc"] for m in here])
        by_kind = {}
        for kind in ("random", "found"):
            pts = [m for m in here if m["kind"] == kind]
            x, y = [m[key] for m in pts], [m["final_test_acc"] for m in pts]
            c = analysis.rank_correlation(x, y)
            step = 0.01 * (np.ptp([m[key] for m in here]) or 1.0)
            by_kind[kind] = {k: c[k] for k in ("n", "kendall_tau", "kendall_tau_ci", "note")}
            label = f"{kind}: τ {tau_text(c)} (n={c['n']})"
            ax.scatter(np.add(x, side_by_side(x, y, step)), y, s=18, marker=marker(kind), facecolors="none",
                       edgecolors=color(kind), label=label)  # fmt: skip
        ax.set_title(f"sparsity {sparsity_label(s, fractions)}\npooled τ {tau_text(corr)} (n={corr['n']})", fontsize=9)
        ax.set_xlabel(f"{EARLY_LABELS[measure]}\n(validation accuracy)", fontsize=9)
        ax.set_ylabel("final test accuracy")
        legend_in_headroom(ax)
        keys = ("kind", "seed", "index", "early_fitness", "early_fitness_heldout", "final_test_acc")
        data.append(
            {
                "sparsity": s,
                "early_measure": measure,
                "kendall_tau": corr["kendall_tau"],
                "kendall_tau_ci": corr["kendall_tau_ci"],
                "by_kind": by_kind,
                "points": [{k: m[k] for k in keys} for m in here],
            }
        )
    brief = "a brief training"
    if brief_images:
        images = f"{count_text(brief_images)} training images"
        reps = set(replicates or [1])
        if measure == "heldout":
            brief = f"one training of {images} under a replicate the search never saw"
        else:
            brief = (
                f"one training of {images}" if reps == {1} else f"the mean of {count_text(reps)} trainings of {images}"
            )
    fig.suptitle(
        f"Early fitness ({brief}) vs final test accuracy ({epochs_text(rows)})\none point per mask (equal ones side "
        "by side); Kendall τ [95% bootstrap CI]",
        fontsize=9,
    )
    meta = {"early_measure": measure, "early_label": EARLY_LABELS[measure], "brief_images": brief_images}
    return save(fig, out, "early_vs_final", sources_of(rows), data, **meta)


def validation_curves(rows: list[dict[str, Any]], out: Path) -> Path:
    """Validation accuracy per epoch of the final training, dense / random / found: the mean over masks (each mask's
    curve averaged over its training seeds) with the 95% t-interval of that mean as the band."""
    masks = [m for m in analysis.masks_of(rows) if all(m["val_curves"])]
    fractions = param_sparsity(rows)
    levels = sorted({m["sparsity"] for m in masks if m["kind"] != "dense"}) or [0.0]
    fig = Figure(figsize=(3.8 * len(levels), 3.8))
    axes = fig.subplots(1, len(levels), squeeze=False)[0]
    data = []
    for ax, s in zip(axes, levels):
        counts, longest = [], 0
        for kind in KINDS:
            group = [m for m in masks if m["kind"] == kind and (kind == "dense" or m["sparsity"] == s)]
            if not group:
                continue
            n = min(len(c) for m in group for c in m["val_curves"])
            curves = [np.mean([c[:n] for c in m["val_curves"]], axis=0).tolist() for m in group]
            band = analysis.curve_band(curves)
            epochs = np.arange(1, n + 1) + (0.08 * (KINDS.index(kind) - 1) if n == 1 else 0)  # one epoch: side by side
            trainings = sum(len(m["val_curves"]) for m in group)
            label = f"{kind} (n={len(group)} masks, {trainings} trainings)"
            ax.plot(epochs, nan_array(band["mean"]), color=color(kind), marker=marker(kind), ms=3, label=label)
            if n == 1 and band["low"][0] is not None:  # one epoch: the band is a bar
                yerr = bars(band["mean"], [[band["low"][0], band["high"][0]]])
                ax.errorbar(epochs, band["mean"], yerr=yerr, color=color(kind), capsize=3, lw=1)
            ax.fill_between(epochs, nan_array(band["low"]), nan_array(band["high"]), color=color(kind), alpha=0.15,
                            lw=0)  # fmt: skip
            longest = max(longest, n)
            counts += [len(group)] if kind != "dense" else []
            data.append({"sparsity": s, "kind": kind, "n": len(group), "trainings": trainings} | band)
        ax.set(xlabel="epoch of the final training", ylabel="validation accuracy\n(band: 95% t-CI of the mean)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if longest == 1:
            ax.set(xticks=[1], xlim=(0.5, 1.5))
        ax.set_title(f"sparsity {sparsity_label(s, fractions)}\nn={count_text(counts)} masks per kind", fontsize=9)
        legend_in_headroom(ax, share=0.35)
    fig.suptitle(
        f"Validation accuracy during the final training ({epochs_text(rows)})\nline: mean over masks (each averaged "
        "over its training seeds); band: 95% t-interval of that mean",
        fontsize=9,
    )
    return save(fig, out, "validation_curves", sources_of(rows), data)


def cost_vs_accuracy(rows: list[dict[str, Any]], out: Path) -> Path:
    """Parameters and FLOPs (multiply-accumulates per image) vs final test accuracy, one point per mask."""
    cost = {analysis.mask_key(r): (r["params"], r["flops"]) for r in rows}
    masks = analysis.masks_of(rows)
    fig = Figure(figsize=(8.5, 3.8))
    axes = fig.subplots(1, 2)
    data, counts = [], []
    for ax, i, label in ((axes[0], 0, "parameters"), (axes[1], 1, "FLOPs (multiply-accumulates per image)")):
        for kind in KINDS:
            pts = [m for m in masks if m["kind"] == kind]
            if pts:
                xs, ys = [cost[m["key"]][i] for m in pts], [m["final_test_acc"] for m in pts]
                xs = np.multiply(xs, 10 ** side_by_side(xs, ys, 0.02))  # log axis: 0.02 decades apart
                ax.scatter(xs, ys, s=16, marker=marker(kind), facecolors="none",
                           edgecolors=color(kind), label=f"{kind} (n={len(pts)})")  # fmt: skip
                counts += [f"{len(pts)} {kind}"] if i == 0 else []
        ax.set_xscale("log")
        ax.set(xlabel=label, ylabel="final test accuracy")
    for m in masks:
        params, flops = cost[m["key"]]
        data.append(
            {k: m[k] for k in ("sparsity", "seed", "kind", "index", "final_test_acc")}
            | {"params": params, "flops": flops}
        )
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Cost vs final test accuracy after {epochs_text(rows)}: one point per mask (equal ones side by side), "
        f"n={', '.join(counts)}",
        fontsize=9,
    )
    return save(fig, out, "cost_vs_accuracy", sources_of(rows), data)
