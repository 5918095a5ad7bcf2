"""Statistics of the paper experiment, from result rows (``final`` records, one per network and training seed).

The unit of every test is a *mask*: its training seeds are averaged first, so that trainings of one mask are never
counted as independent samples. Per sparsity: found vs random final test accuracy (mean ± std, the difference of means
with its Welch SE and 95% t interval, two-sided exact Mann-Whitney U, Cliff's delta = the rank-biserial correlation),
the same paired by search seed (found - random of a seed's mean accuracies, exact Wilcoxon signed-rank) and blocked by
it (masks ranked within their seed, exact stratified rank sum: the power of every mask, free of seed effects), Kendall τ
and Spearman ρ between early fitness and final accuracy, pooled and within each kind, with seeded percentile-bootstrap
CIs (early fitness: the held-out replicate's when every mask has one, free of the winner's curse of the search's own
value, else the search's; ``early_measure`` says which), the noise ceiling (pooled within-mask std across training
seeds), variance components of final accuracy (mask vs training seed, ICC(1) with a bootstrap CI: can one final training
tell masks apart at all?), and convergence (epochs to reach a target validation accuracy). GA vs Random Search: the best
fitness within an equal budget of evaluations, unpaired and paired by seed. Numbers that a sample too small (or
constant) cannot give are None, with a note saying why. The tests themselves live in ``significance``.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from evo_sparse.stats.significance import clean as _clean  # measurement imports it from here
from evo_sparse.stats.significance import mann_whitney, mean_difference, paired, stratified_rank_sum

BOOTSTRAP = 2000  # resamples for the rank-correlation CIs
EARLY_KEYS = {"heldout": "early_fitness_heldout", "search": "early_fitness"}  # early-fitness measure: its field
TARGET_FRACTION = 0.95  # convergence target: this share of the mean final validation accuracy at that sparsity


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "std"}`` (std with ddof=1; None when n < 2)."""
    v = np.asarray(values, dtype=float)
    return {
        "n": len(v),
        "mean": _clean(v.mean()) if len(v) else None,
        "std": _clean(v.std(ddof=1)) if len(v) > 1 else None,
    }


def two_groups(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """Two-sided Mann-Whitney U of ``a`` vs ``b`` from its exact permutation distribution (``u``, ``p_value``,
    ``p_method``, ``p_min``: see ``significance.mann_whitney``), Cliff's delta (P(a > b) - P(a < b)), the difference of
    means with its Welch SE and 95% t interval (``difference``: ``significance.mean_difference``) and the summaries."""
    out = {"a": summary(a), "b": summary(b), "u": None, "p_value": None, "p_method": None, "p_min": None}
    out |= {"cliffs_delta": None, "difference": mean_difference(a, b), "note": None}
    if len(a) < 2 or len(b) < 2:
        out["note"] = f"needs at least 2 masks per group, has {len(a)} and {len(b)}"
        return out
    diff = np.sign(np.subtract.outer(np.asarray(a, float), np.asarray(b, float)))
    out["cliffs_delta"] = float(diff.mean())
    if np.ptp(np.concatenate([a, b])) == 0:  # every split gives the same U: p = 1, the exact test's own answer
        return out | {"p_value": 1.0, "p_method": "exact", "note": "every value is equal: p = 1"}
    test = mann_whitney(a, b, seed=seed)
    return out | {"u": test["u"], "p_value": test["p_value"], "p_method": test["method"], "p_min": test["min_p"]}


def rank_correlation(x: Sequence[float], y: Sequence[float], *, seed: int = 0, n_boot: int = BOOTSTRAP) -> dict:
    """Kendall τ and Spearman ρ of paired ``x`` and ``y`` with 95% percentile-bootstrap CIs (resampling pairs)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out: dict[str, Any] = {"n": len(x), "note": None}
    for name in ("kendall_tau", "spearman_rho"):
        out |= {name: None, f"{name}_p": None, f"{name}_ci": None}
    if len(x) < 3:
        out["note"] = f"needs at least 3 masks, has {len(x)}"
        return out
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = "early or final accuracy is constant: no rank correlation"
        return out
    rng = np.random.default_rng(seed)
    boot = _bootstrap(x, y, rng.integers(0, len(x), size=(n_boot, len(x))))
    for name, fn in (("kendall_tau", stats.kendalltau), ("spearman_rho", stats.spearmanr)):
        r = fn(x, y)
        b = boot[name][np.isfinite(boot[name])]
        ci = [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))] if len(b) else None
        out |= {name: _clean(r.statistic), f"{name}_p": _clean(r.pvalue), f"{name}_ci": ci}
    return out


def _bootstrap(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Kendall τ-b and Spearman ρ of every resample (rows of ``idx``), vectorised; NaN where one side is constant.

    τ-b = Σ sign(dx)·sign(dy) / sqrt(Σ sign(dx)² · Σ sign(dy)²) over pairs; ρ = Pearson of the average ranks.
    """
    taus, rhos = [], []
    step = max(1, 4_000_000 // len(x) ** 2)  # resamples per chunk: bounds the pair matrices' memory
    for start in range(0, len(idx), step):
        xs, ys = x[idx[start : start + step]], y[idx[start : start + step]]
        sx = np.sign(xs[:, :, None] - xs[:, None, :])
        sy = np.sign(ys[:, :, None] - ys[:, None, :])
        rx, ry = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
        rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            taus.append((sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2))))
            rhos.append((rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1)))
    return {"kendall_tau": np.concatenate(taus), "spearman_rho": np.concatenate(rhos)}


def mask_key(row: dict[str, Any]) -> tuple:
    """What identifies a mask across its training seeds: (sparsity, seed, kind, index, the folder it came from)."""
    return row["sparsity"], row["seed"], row["kind"], row["index"], str(row.get("source"))


def masks_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per mask (``mask_key``): its rows' final accuracies averaged over training seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get("final_test_acc") is not None:
            groups[mask_key(r)].append(r)
    out = []
    for key, rs in sorted(groups.items()):
        sparsity, seed, kind, index, _ = key
        out.append(
            {
                "key": key,
                "sparsity": sparsity,
                "seed": seed,
                "kind": kind,
                "index": index,
                "early_fitness": rs[0].get("early_fitness"),  # as the search measured it
                "early_fitness_heldout": _first(r.get("early_fitness_heldout") for r in rs),  # a replicate it never saw
                "final_test_acc": float(np.mean([r["final_test_acc"] for r in rs])),
                "test_accs": [r["final_test_acc"] for r in rs],
                "val_curves": [r["val_acc"] for r in rs],
            }
        )
    return out


def early_measure(masks: list[dict[str, Any]]) -> str:
    """Which early fitness the early-vs-final statistics use: ``"heldout"`` (``early_fitness_heldout``, measured
    under a replicate the search never saw) when every found and random mask has it, else ``"search"``
    (``early_fitness``, the value selection picked the found masks by). One measure for all masks, never a mix."""
    sparse = [m for m in masks if m["kind"] != "dense"]
    return "heldout" if sparse and all(m.get("early_fitness_heldout") is not None for m in sparse) else "search"


def _first(values) -> Any:
    """The first value that is not None (None if none): a mask's held-out early fitness is the same in every row that
    has one, and a row written before it existed has none."""
    return next((v for v in values if v is not None), None)


def epochs_to(curve: Sequence[float], target: float) -> int | None:
    """First epoch (1-based) whose validation accuracy reaches ``target``; None if none does."""
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target), None)


def convergence(found: list[dict], random: list[dict], *, fraction: float = TARGET_FRACTION) -> dict[str, Any]:
    """Epochs to reach ``fraction`` x the mean final validation accuracy of both groups, found vs random.

    A mask's epochs are the mean over its training seeds; a training that never reaches the target counts as
    ``epochs + 1`` in the test (censored), and the share that reached it is reported.
    """
    finals = [c[-1] for m in found + random for c in m["val_curves"] if c]
    if not finals:
        return {"target": None, "note": "no validation curves"}
    target = fraction * float(np.mean(finals))

    def per_mask(masks):
        values, reached = [], []
        for m in masks:
            hits = [epochs_to(c, target) for c in m["val_curves"]]
            reached += [h is not None for h in hits]
            values.append(float(np.mean([h if h is not None else len(c) + 1 for h, c in zip(hits, m["val_curves"])])))
        return values, (float(np.mean(reached)) if reached else None)

    f_epochs, f_share = per_mask(found)
    r_epochs, r_share = per_mask(random)
    test = two_groups(f_epochs, r_epochs)
    return {
        "target": target,
        "fraction": fraction,
        "found_epochs": test["a"],
        "random_epochs": test["b"],
        "found_reached": f_share,
        "random_reached": r_share,
        "p_value": test["p_value"],
        "cliffs_delta": test["cliffs_delta"],
        "note": test["note"],
    }


def noise_ceiling(masks: list[dict]) -> dict[str, Any]:
    """The pooled within-mask std of final test accuracy across training seeds, over masks trained at least twice:
    sqrt(Σ (n_i - 1) s_i² / Σ (n_i - 1)), the square root of the mean within-mask variance when every mask has as many
    seeds (not the mean of the stds, which is biased low); ``df`` is Σ (n_i - 1)."""
    accs = [np.asarray(m["test_accs"], float) for m in masks if len(m["test_accs"]) > 1]
    if not accs:
        return {"std": None, "masks": 0, "df": 0, "note": "no mask was trained under 2 or more seeds (--final-seeds)"}
    df = sum(len(a) - 1 for a in accs)
    pooled = sum(float(((a - a.mean()) ** 2).sum()) for a in accs) / df
    return {"std": math.sqrt(pooled), "masks": len(accs), "df": df, "note": None}


def variance_components(masks: list[dict], *, seed: int = 0) -> dict[str, Any]:
    """How much of final test accuracy is the mask rather than the training seed: ``measurement.reliability`` (ICC(1)
    with a seeded bootstrap CI, between- and within-mask sd, Spearman–Brown) of the [masks, R] matrix of each mask's
    first R training seeds, R chosen to keep the most values; for the ``found`` masks, the ``random`` ones and ``both``
    (whose between-mask part includes the found-vs-random difference). A group without 2 masks of 2 or more training
    seeds has only ``masks`` and a note."""
    from evo_sparse.stats import measurement  # here, not above: measurement imports this module

    out = {}
    for name in ("found", "random", "both"):
        group = [m["test_accs"] for m in masks if name == "both" or m["kind"] == name]
        counts = [len(a) for a in group]
        r = max(range(2, max(counts, default=0) + 1), key=lambda k: k * sum(c >= k for c in counts), default=0)
        rows = [a[:r] for a in group if r and len(a) >= r]
        if len(rows) < 2:
            note = "needs 2 or more masks trained under 2 or more seeds (--final-seeds)"
            out[name] = {"masks": len(rows), "note": note}
        else:
            out[name] = measurement.reliability(rows, seed=seed) | {"note": None}
    return out


def analyse(rows: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Every statistic of the study, per sparsity (``"dense"`` summarises the dense parent)."""
    masks = masks_of(rows)
    dense = [m for m in masks if m["kind"] == "dense"]
    measure = early_measure(masks)
    early = EARLY_KEYS[measure]
    out: dict[str, Any] = {
        "unit": "mask (final accuracy averaged over its training seeds)",
        "early_measure": measure,
        "dense": summary([m["final_test_acc"] for m in dense]) | {"noise_ceiling": noise_ceiling(dense)},
        "sparsities": [],
    }
    for s in sorted({m["sparsity"] for m in masks if m["kind"] != "dense"}):
        found = [m for m in masks if m["sparsity"] == s and m["kind"] == "found"]
        random = [m for m in masks if m["sparsity"] == s and m["kind"] == "random"]
        test = two_groups([m["final_test_acc"] for m in found], [m["final_test_acc"] for m in random], seed=seed)
        corr = {"early_measure": measure} | _early_vs_final(found + random, early, seed)
        by_kind = {kind: _early_vs_final(group, early, seed) for kind, group in (("found", found), ("random", random))}
        corr |= {"by_kind": by_kind, "masks": [_early_row(m) for m in found + random]}
        out["sparsities"].append(
            {
                "sparsity": s,
                "found": test["a"],
                "random": test["b"],
                "found_minus_random": _diff(test["a"]["mean"], test["b"]["mean"]),
                "found_minus_random_se": test["difference"]["se"],
                "found_minus_random_ci": test["difference"]["ci"],
                "found_minus_random_df": test["difference"]["df"],
                "mann_whitney_u": test["u"],
                **_test_fields(test),
                "paired": _paired_by_seed(found, random, seed),
                "within_seed": _within_seed(found, random),
                "early_vs_final": corr,
                "noise_ceiling": noise_ceiling(found + random),
                "variance_components": variance_components(found + random, seed=seed),
                "convergence": convergence(found, random),
            }
        )
    return out


def _early_vs_final(masks: list[dict[str, Any]], early: str, seed: int) -> dict[str, Any]:
    """``rank_correlation`` of the masks' early fitness (field ``early``) and final accuracy, masks without one left
    out."""
    have = [m for m in masks if m[early] is not None]
    return rank_correlation([m[early] for m in have], [m["final_test_acc"] for m in have], seed=seed)


def _paired_by_seed(found: list[dict], random: list[dict], seed: int) -> dict[str, Any]:
    """Found - random paired by search seed: per seed with both kinds, the mean final accuracy of its found masks minus
    that of its random masks (``significance.paired``: Wilcoxon signed-rank, mean with SE and t interval), plus
    ``seeds`` and ``differences``."""
    acc = {kind: defaultdict(list) for kind in ("found", "random")}
    for m in found + random:
        acc[m["kind"]][m["seed"]].append(m["final_test_acc"])
    seeds = sorted(set(acc["found"]) & set(acc["random"]))
    diffs = [float(np.mean(acc["found"][s]) - np.mean(acc["random"][s])) for s in seeds]
    unit = "search seed (mean over its masks of each kind)"
    return {"unit": unit} | paired(diffs, seed=seed) | {"seeds": seeds, "differences": diffs}


def _within_seed(found: list[dict], random: list[dict]) -> dict[str, Any]:
    """Found vs random with masks as the unit, blocked by search seed (``significance.stratified_rank_sum``: exact,
    labels permuted within each seed), plus ``seeds``."""
    by_seed = defaultdict(lambda: ([], []))
    for m in found + random:
        by_seed[m["seed"]][m["kind"] == "random"].append(m["final_test_acc"])
    seeds = sorted(by_seed)
    test = stratified_rank_sum([by_seed[s] for s in seeds])
    return {"unit": "mask, ranked within its search seed"} | test | {"seeds": seeds}


def _early_row(m: dict[str, Any]) -> dict[str, Any]:
    """A mask's early fitness by both measures, and its final accuracy (a row of ``early_vs_final["masks"]``)."""
    keys = ("kind", "seed", "index", "early_fitness", "early_fitness_heldout", "final_test_acc")
    return {k: m.get(k) for k in keys}


def _test_fields(test: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``two_groups`` result that analysis.json and comparison.json report under their own names."""
    return {k: test[k] for k in ("p_value", "p_method", "p_min", "cliffs_delta", "note")}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def best_so_far(fitness: Sequence[float | None]) -> list[float | None]:
    """Running maximum of a run's evaluations in order (failed ones, None, improve nothing)."""
    out, best = [], None
    for f in fitness:
        if f is not None and (best is None or f > best):
            best = f
        out.append(best)
    return out


def curve_band(curves: list[list[float | None]]) -> dict[str, list[float | None]]:
    """Mean and 95% t-interval across runs at every x (the band is None where fewer than 2 runs have a value; a run
    shorter than the others counts where it has values)."""
    mean, low, high = [], [], []
    for column in itertools.zip_longest(*curves):
        v = np.array([c for c in column if c is not None], float)
        m = _clean(v.mean()) if len(v) else None
        half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else None
        mean.append(m)
        low.append(None if half is None else _clean(m - half))
        high.append(None if half is None else _clean(m + half))
    return {"mean": mean, "low": low, "high": high}


def compare_algorithms(
    finals: dict[str, list[float]], *, by_seed: dict[str, dict[int, float]] | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Each algorithm after the first against the first (the baseline) on final best fitness: the difference of means
    with its Welch SE and 95% t interval, exact Mann-Whitney U, Cliff's delta, and, given ``by_seed`` ({algorithm:
    {run seed: value}}), ``paired``: algorithm - baseline of the seeds both have (``significance.paired``, exact
    Wilcoxon signed-rank; runs of one seed share every seed derived from it)."""
    names = list(finals)
    out = []
    for name in names[1:]:
        test = two_groups(finals[name], finals[names[0]], seed=seed)
        entry = {
            "algorithm": name,
            "baseline": names[0],
            "difference": _diff(test["a"]["mean"], test["b"]["mean"]),
            "difference_se": test["difference"]["se"],
            "difference_ci": test["difference"]["ci"],
            **_test_fields(test),
        }
        if by_seed is not None:
            mine, base = by_seed.get(name, {}), by_seed.get(names[0], {})
            seeds = sorted(set(mine) & set(base))
            diffs = [float(mine[s] - base[s]) for s in seeds]
            entry["paired"] = {"unit": "run seed"} | paired(diffs, seed=seed) | {"seeds": seeds, "differences": diffs}
        out.append(entry)
    return out


def format_analysis(a: dict[str, Any]) -> str:
    """A few readable lines: per sparsity, found vs random and early-vs-final τ (with the early measure it used)."""

    def ms(s):
        if s["mean"] is None:
            return "-"
        return f"{s['mean']:.4f} ± {s['std']:.4f}" if s["std"] is not None else f"{s['mean']:.4f}"

    def num(x, fmt=".3f"):
        return "-" if x is None else format(x, fmt)

    d = a["dense"]
    lines = [f"dense           test acc {ms(d)} (n={d['n']})"] if d["n"] else []
    for s in a["sparsities"]:
        c, pair = s["early_vs_final"], s.get("paired") or {}  # an analysis.json from before pairing has none
        lines.append(
            f"sparsity {s['sparsity']:<5}  found {ms(s['found'])} (n={s['found']['n']})  random {ms(s['random'])} "
            f"(n={s['random']['n']})  p={num(s['p_value'])}  paired p={num(pair.get('p_value'))} "
            f"(n={pair.get('n', 0)})  within-seed p={num((s.get('within_seed') or {}).get('p_value'))}  "
            f"delta={num(s['cliffs_delta'], '+.2f')}  "
            f"tau={num(c['kendall_tau'], '+.2f')} ({c.get('early_measure', 'search')} early fitness)  "
            f"noise std={num(s['noise_ceiling']['std'], '.4f')}"
        )
    return "\n".join(lines)
