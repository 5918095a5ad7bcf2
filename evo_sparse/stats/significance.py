"""Significance tests and intervals, exact where the sample allows: two-sided Mann-Whitney U (``mann_whitney``),
Wilcoxon signed-rank (``wilcoxon_signed_rank``) and the rank sum within strata (``stratified_rank_sum``) from their
exact permutation distributions, ties included, and the difference of two means (``mean_difference``, Welch) or the
mean of paired differences (``paired``) with an SE and a t interval.

Exact means every split (or sign flip) of the ranks is counted: the null distribution of the rank sum is built by a
dynamic programme over (twice) the midranks, which counts the same C(n+m, n) splits or 2^n sign flips that listing
them would, in polynomial time. Counts are float64, exact integers up to 2^53 splits and accurate to ~1e-16 relative
beyond. Two-sided p = min(1, 2 · min(P(S ≤ s), P(S ≥ s))) for the observed rank sum s, scipy's convention (it
equals scipy's exact p when there are no ties). Values equal to ``TIE_DECIMALS`` decimals are ties, so that float
rounding in a mean never breaks one. Each exact result also gives ``min_p``: the smallest p the sample sizes and ties
could give at all (3 vs 3 masks: 0.1, so such a test can never reach 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

EXACT_WORK = 50_000_000  # Mann-Whitney: table cells (values x group size x rank sums) counted exactly; 50 vs 50 fits
EXACT_PAIRS = 50  # Wilcoxon: nonzero differences up to which the 2^n sign flips are counted exactly (2^50 < 2^53)
RESAMPLES = 100_000  # above those limits: seeded random permutations (scipy.stats.permutation_test); p within ~0.003
TIE_DECIMALS = 12  # values equal to this many decimals are ties (accuracies are multiples of 1e-4)
LEVEL = 0.95  # confidence level of every t interval


def clean(x: float | None) -> float | None:
    """A float for JSON: None for None, NaN and inf."""
    return None if x is None or not math.isfinite(x) else float(x)


def _subset_sums(weights: np.ndarray, size: int | None = None) -> np.ndarray:
    """Counts of the subsets of ``weights`` (positive integers) by their sum (index = sum): subsets of every size when
    ``size`` is None (sign flips), else of exactly ``size`` items (splits into two groups)."""
    if size is None:
        counts = np.zeros(int(weights.sum()) + 1)
        counts[0] = 1.0
        for w in weights:
            counts[w:] = counts[w:] + counts[:-w]  # the right side is evaluated first: each weight is used once
        return counts
    top = int(np.sort(weights)[len(weights) - size :].sum())  # the largest reachable sum
    counts = np.zeros((size + 1, top + 1))
    counts[0, 0] = 1.0
    for w in weights:
        counts[1:, w:] = counts[1:, w:] + counts[:-1, : top + 1 - w]
    return counts[size]


def _two_sided(counts: np.ndarray, observed: int) -> tuple[float, float]:
    """(p of the observed sum, the smallest p any sum could give) under the null distribution ``counts``."""
    pmf = counts / counts.sum()
    p = 2 * min(pmf[: observed + 1].sum(), pmf[observed:].sum())
    reachable = np.flatnonzero(counts)
    return min(1.0, float(p)), min(1.0, float(2 * min(pmf[reachable[0]], pmf[reachable[-1]])))


def _twice_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(midranks of ``values`` with ties to ``TIE_DECIMALS``, the same doubled as integers)."""
    ranks = stats.rankdata(np.round(values, TIE_DECIMALS))
    return ranks, np.rint(2 * ranks).astype(np.int64)


def mann_whitney(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES, exact_work: int = EXACT_WORK
) -> dict[str, Any]:
    """Two-sided Mann-Whitney U of ``a`` vs ``b`` (each non-empty): ``u`` (a's U: its midrank sum - n(n+1)/2, as
    scipy), ``p_value``, ``min_p`` and ``method``: ``"exact"`` (every split counted) while the table has at most
    ``exact_work`` cells, else ``"permutation"`` (``resamples`` random splits drawn with
    ``numpy.random.default_rng(seed)``; ``min_p`` None). Raises ValueError for an empty group."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n, m = len(a), len(b)
    if not n or not m:
        raise ValueError(f"Mann-Whitney U needs two non-empty groups, got {n} and {m} values")
    ranks, twice = _twice_ranks(np.concatenate([a, b]))
    out = {"u": float(ranks[:n].sum() - n * (n + 1) / 2), "method": "exact", "resamples": None}
    k, group = (n, twice[:n]) if n <= m else (m, twice[n:])  # count splits of the smaller group: a smaller table
    top = int(np.sort(twice)[n + m - k :].sum())
    if (n + m) * (k + 1) * (top + 1) <= exact_work:
        p, min_p = _two_sided(_subset_sums(twice, k), int(group.sum()))
        return out | {"p_value": p, "min_p": min_p}
    res = stats.permutation_test(
        (ranks[:n], ranks[n:]),
        lambda x, y, axis: np.sum(x, axis=axis),
        permutation_type="independent",
        vectorized=True,
        n_resamples=resamples,
        rng=np.random.default_rng(seed),
    )
    return out | {"p_value": float(res.pvalue), "min_p": None, "method": "permutation", "resamples": resamples}


def wilcoxon_signed_rank(
    differences: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES, exact_pairs: int = EXACT_PAIRS
) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired ``differences`` (x - y) against a median of 0.

    Zeros are dropped before ranking (Wilcoxon's own treatment, scipy's ``zero_method="wilcox"``); ``zeros`` says how
    many. The nonzero |differences| get midranks (ties allowed); ``w_plus`` is the rank sum of the positive ones. Up
    to ``exact_pairs`` nonzero differences every one of the 2^n sign flips is counted (``method`` ``"exact"``), beyond
    that ``resamples`` random flips (``"permutation"``, ``numpy.random.default_rng(seed)``). ``n`` counts every
    pair; ``p_value`` is None, with a note, when no difference is nonzero."""
    d = np.asarray(differences, float)
    nonzero = d[np.round(d, TIE_DECIMALS) != 0]
    out: dict[str, Any] = {"n": len(d), "zeros": len(d) - len(nonzero), "w_plus": None, "p_value": None}
    out |= {"min_p": None, "method": None, "resamples": None, "note": None}
    if not len(nonzero):
        if not len(d):
            return out | {"note": "no pairs"}
        return out | {"p_value": 1.0, "method": "exact", "note": "no pair differs: p = 1"}
    ranks, twice = _twice_ranks(np.abs(nonzero))
    positive = nonzero > 0
    out["w_plus"] = float(ranks[positive].sum())
    if len(nonzero) <= exact_pairs:
        p, min_p = _two_sided(_subset_sums(twice), int(twice[positive].sum()))
        return out | {"p_value": p, "min_p": min_p, "method": "exact"}
    res = stats.permutation_test(
        (np.where(positive, ranks, -ranks),),
        lambda x, axis: np.sum(np.where(x > 0, x, 0), axis=axis),
        permutation_type="samples",  # one sample: the signs are flipped
        vectorized=True,
        n_resamples=resamples,
        rng=np.random.default_rng(seed),
    )
    return out | {"p_value": float(res.pvalue), "method": "permutation", "resamples": resamples}


def stratified_rank_sum(strata: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict[str, Any]:
    """Two-sided exact test of ``a`` vs ``b`` blocked by stratum (e.g. found vs random masks within each search seed):
    the sum over strata of ``a``'s within-stratum rank sum (van Elteren's stratified Wilcoxon without its 1/(n+1)
    weights, which equal strata make the same), its null distribution the convolution of each stratum's exact
    rank-sum distribution (labels permuted within strata only, ties as midranks). Masks are the unit, so it has the
    power of every mask while a difference between strata (their parents, data order) cancels, which a test of
    per-stratum means cannot give with few strata (3 seeds: p ≥ 0.25). Returns ``w`` (a's summed midranks),
    ``expected_w``, ``p_value``, ``min_p``, ``method`` ("exact"), ``strata`` (how many had both groups) and a
    ``note`` when none had."""
    counts, observed, w, expected = np.ones(1), 0, 0.0, 0.0
    used = 0
    for a, b in strata:
        a, b = np.asarray(a, float), np.asarray(b, float)
        if not len(a) or not len(b):
            continue
        ranks, twice = _twice_ranks(np.concatenate([a, b]))
        counts = np.convolve(counts, _subset_sums(twice, len(a)))
        observed += int(twice[: len(a)].sum())
        w += float(ranks[: len(a)].sum())
        expected += len(a) * (len(a) + len(b) + 1) / 2
        used += 1
    out: dict[str, Any] = {"w": None, "expected_w": None, "p_value": None, "min_p": None, "method": None}
    if not used:
        return out | {"strata": 0, "note": "no stratum has values of both groups"}
    p, min_p = _two_sided(counts, observed)
    exact = {"p_value": p, "min_p": min_p, "method": "exact", "strata": used, "note": None}
    return out | {"w": w, "expected_w": expected} | exact


def _t_interval(estimate: float, se: float, df: float | None, level: float) -> list[float] | None:
    if se == 0:
        return [estimate, estimate]
    if df is None or not df > 0:
        return None
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    return [estimate - half, estimate + half]


def mean_difference(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL) -> dict[str, Any]:
    """mean(a) - mean(b) with Welch's SE, sqrt(s_a²/n_a + s_b²/n_b), the Welch-Satterthwaite df and the t interval
    at ``level`` (``ci`` [low, high]); ``se``, ``df`` and ``ci`` are None unless both groups have 2 or more values
    (``df`` None and ``ci`` a point when both are constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = clean(a.mean() - b.mean()) if len(a) and len(b) else None
    out = {"difference": diff, "se": None, "df": None, "ci": None, "level": level}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else None
    return out | {"se": se, "df": clean(df), "ci": _t_interval(diff, se, df, level)}


def paired(differences: Sequence[float], *, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """Paired differences summarised and tested: ``n``, ``mean_diff`` with its SE (sd/√n), ``df`` (n - 1) and t
    interval ``ci`` at ``level`` (None below 2 pairs), ``median_diff``, and the exact Wilcoxon signed-rank test
    (``wilcoxon_signed_rank``: ``w_plus``, ``p_value``, ``min_p``, ``method``, ``zeros``, ``note``)."""
    d = np.asarray(differences, float)
    out: dict[str, Any] = {"n": len(d), "mean_diff": clean(d.mean()) if len(d) else None}
    out |= {"median_diff": clean(float(np.median(d))) if len(d) else None, "se": None, "df": None, "ci": None}
    if len(d) > 1:
        se = float(d.std(ddof=1) / math.sqrt(len(d)))
        out |= {"se": se, "df": len(d) - 1, "ci": _t_interval(out["mean_diff"], se, len(d) - 1, level)}
    return out | {"level": level} | wilcoxon_signed_rank(d, seed=seed)
