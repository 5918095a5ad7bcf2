"""Figures of searches: ``fitness_over_generations`` (with a noise reference), ``best_so_far`` (algorithms vs
trainings, with pure Random Search's expected curve) and ``fidelity`` (reliability of a fitness vs its budget)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evo_sparse.foundations.paths import CONFIG
from evo_sparse.foundations.storage import read_json
from evo_sparse.study.plot_style import (
    CYCLE,
    REFERENCE_COLOR,
    bars,
    brief_trainings,
    color,
    count_text,
    evaluation_text,
    marker,
    nan_array,
    save,
)


def validation_images(summary: dict[str, Any]) -> int | None:
    """Validation images one fitness is measured on: the summary's ``val_images``, else the run's config
    (``train.val_images``, 0 meaning all ``data.val_size``); None when neither is there."""
    if summary.get("val_images"):
        return summary["val_images"]
    path = Path(summary["run_dir"]) / CONFIG
    if not path.exists():
        return None
    cfg = read_json(path, "run config")
    size, used = cfg.get("data", {}).get("val_size"), cfg.get("train", {}).get("val_images")
    return min(used, size) if used and size else used or size


def fitness_noise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The noise of one fitness value for a line of ``fitness_over_generations``: the pooled ``fitness_sd`` the runs
    measured from their replicates (``runs.report``'s ``noise``), else the binomial SE of an accuracy on the
    validation images, sqrt(p(1-p)/n_val) (evaluation noise only: training noise adds to it), else nothing."""
    sds = [r["noise"]["fitness_sd"] for r in runs if (r.get("noise") or {}).get("measured")]
    if sds:
        return {"kind": "replicates", "sd": math.sqrt(float(np.mean(np.square(sds)))), "runs": len(sds)}
    n_val = [n for n in map(validation_images, runs) if n]
    return {"kind": "binomial", "val_images": min(n_val)} if n_val else {"kind": None}


NOISE_CAPTIONS = {
    "replicates": "band: ± 1 SD of one fitness value, measured from the runs' replicates",
    "binomial": "band: ± binomial SE of an accuracy on the validation images, sqrt(p(1-p)/n_val) "
    "(evaluation noise only)",
    None: "no noise reference: the runs measured none (--replicates 1) and name no validation images",
}


def fitness_over_generations(summaries: list[dict[str, Any]], out: Path) -> Path:
    """Best (solid, markers) and population mean (faint) fitness per generation, averaged over the seeds of each
    setting (algorithm, sparsity, population, generations; a run given twice counts once), the best with a band of
    ± the noise of one fitness value (``fitness_noise``) so that a gain can be read against it. Ask/tell runs have
    asks, not generations (each ask's best is not a best so far): they are left to ``best_so_far``."""
    groups = defaultdict(list)
    asks = {s["algorithm"] for s in summaries if s.get("kind") == "ask/tell"}
    summaries = [s for s in summaries if s.get("kind") != "ask/tell"]
    for s in {s["run_dir"]: s for s in summaries if s["logbook"]}.values():
        groups[(s["algorithm"], s["sparsity"], s.get("population_size"), s.get("generations"))].append(s)
    fig = Figure(figsize=(6, 4.4))
    ax = fig.subplots()
    data, captions = [], []
    styles = ["-", "-.", ":", (0, (5, 1))]
    for i, ((alg, sparsity, pop, generations), runs) in enumerate(sorted(groups.items(), key=str)):
        n = min(len(r["logbook"]) for r in runs)
        best = [_mean([r["logbook"][g]["max"] for r in runs]) for g in range(n)]
        avg = [_mean([r["logbook"][g]["avg"] for r in runs]) for g in range(n)]
        gens = np.arange(1, n + 1)
        noise = fitness_noise(runs)
        half = _noise_half_width(noise, best)
        style = {"color": color(alg), "ls": styles[i % len(styles)]}
        label = f"{alg} s={sparsity:g} P={pop} G={generations} (n={len(runs)} seeds)"
        ax.plot(gens, nan_array(best), marker=marker(alg), ms=4, label=f"{label} best", **style)
        ax.plot(gens, nan_array(avg), alpha=0.45, label=f"{label} mean", **style)
        if half is not None:
            ax.fill_between(gens, nan_array(best) - half, nan_array(best) + half, color=color(alg), alpha=0.12, lw=0)
        captions.append(NOISE_CAPTIONS[noise["kind"]])
        entry = {"algorithm": alg, "sparsity": sparsity, "population": pop, "generations": generations}
        entry |= {"runs": len(runs), "best": best, "mean": avg, "noise": noise}
        data.append(entry | {"noise_half_width": None if half is None else half.tolist()})
    ax.set(xlabel="generation", ylabel="fitness (early validation accuracy)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    images, replicates = brief_trainings(summaries)
    one = f"brief training of {count_text(images)} images" if images else "brief training"
    many = f"the mean of {count_text(replicates)} {one.replace('training', 'trainings')}"
    brief = f"a {one}" if replicates == [1] else many
    noise_text = ";\n".join(
        sorted(set(captions))
        + ([f"not drawn (ask/tell: asks, not generations): {', '.join(sorted(asks))}"] if asks else [])
    )
    ax.set_title(
        f"Fitness over generations, each fitness {brief}\nmean over n={count_text(len(r) for r in groups.values())} "
        f"seeds per line (faint: population mean)\n{noise_text}",
        fontsize=8,
    )
    ax.legend(fontsize=6)
    return save(fig, out, "fitness_over_generations", [s["run_dir"] for s in summaries], data)


def _noise_half_width(noise: dict[str, Any], best: list[float | None]) -> np.ndarray | None:
    """Per generation, the half width of the noise band around the best fitness (None without a reference)."""
    if noise["kind"] == "replicates":
        return np.full(len(best), noise["sd"])
    if noise["kind"] == "binomial":
        p = np.clip(nan_array(best), 0.0, 1.0)
        return np.sqrt(p * (1 - p) / noise["val_images"])
    return None


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def best_so_far(comparison: dict[str, Any], out: Path) -> Path:
    """Best fitness so far vs trainings, per algorithm: the mean over runs with its 95% t-interval as the band, and,
    when the comparison has a ``random_reference``, its ``expected_best`` dashed: what pure Random Search would reach
    by drawing i.i.d. from generation 0's fitness values (``stats.reference``). The budget is ``budget_trainings``
    (``budget_evaluations`` in comparisons written before it)."""
    fig = Figure(figsize=(6, 4.3))
    ax = fig.subplots()
    for alg, band in comparison["bands"].items():
        x = np.arange(1, len(band["mean"]) + 1)
        n = sum(r["algorithm"] == alg for r in comparison["runs"])
        ax.plot(x, nan_array(band["mean"]), color=color(alg), marker=marker(alg), ms=4,
                markevery=max(1, len(x) // 12), label=f"{alg} (n={n} runs)")  # fmt: skip
        ax.fill_between(x, nan_array(band["low"]), nan_array(band["high"]), color=color(alg), alpha=0.2, lw=0)
    ref = comparison.get("random_reference")
    if ref:
        m = ref["values"] if isinstance(ref["values"], int) else sum(v is not None for v in ref["values"])
        curve = ref["expected_best"]
        label = f"expected best of N i.i.d. random masks\n(gen-0 distribution, m={m} values)"
        ax.plot(np.arange(1, len(curve) + 1), nan_array(curve), color=REFERENCE_COLOR, ls="--", label=label)
    budget = comparison.get("budget_trainings", comparison.get("budget_evaluations"))
    ax.set(
        xlabel=f"fitness evaluations (each {evaluation_text(comparison)})",
        ylabel="best fitness so far",
    )
    runs = count_text(sum(r["algorithm"] == a for r in comparison["runs"]) for a in comparison["bands"])
    ax.set_title(
        f"Best fitness so far at an equal budget{'' if budget is None else f' of {budget} evaluations'}, n={runs} "
        "runs per algorithm\nline: mean over runs; band: 95% t-interval of the mean",
        fontsize=9,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    meta = {"budget_trainings": budget, "evaluation": evaluation_text(comparison), "random_reference": ref}
    return save(fig, out, "best_so_far", [r["run_dir"] for r in comparison["runs"]], comparison["bands"], **meta)


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
        style = {"color": CYCLE[n % len(CYCLE)], "marker": "o" if sampling == "global" else "s", "capsize": 3}
        label = f"{sampling}, lr {lr:g}"
        icc = [e["icc"] for e in es]
        err = bars(icc, [e["icc_ci"] for e in es])
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
            err = bars(taus, cis)
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
    axes[0].set_title(f"fitness reliability, n={m} masks x {r} replicates (95% CI)", fontsize=10)
    axes[-1].legend(fontsize=8, loc="upper right" if with_ref else "lower left")
    if with_ref:
        axes[1].axhline(0, color="grey", lw=0.8)
        axes[1].set_ylabel(f"Kendall τ with the {report['reference_epochs']}-epoch test accuracy")
        axes[1].set_title(f"does fitness rank like longer training? n={m} masks (95% CI)", fontsize=10)
    data = [{k: e.get(k) for k in ("key", "sampling", "train_images", "lr", "icc", "icc_ci", "reliability_of_mean",
                                   "seconds_per_training", "reference")} for e in entries]  # fmt: skip
    return save(fig, Path(out), "fidelity_reliability", [source or str(out)], data)
