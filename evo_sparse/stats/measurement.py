"""How much of a measured fitness is the mask: variance components of repeated trainings, ICC(1) with a bootstrap CI,
agreement between replicates, and Spearman–Brown.

Each mask is trained R times (replicates) with different seeds. ICC(1) is the share of the variance of a single fitness
value that is due to the mask (between-mask variance) rather than to training noise (within-mask variance): 1 means a
single training ranks masks perfectly, 0 means its fitness is pure noise. Spearman–Brown gives the reliability of the
mean of k replicates, k*icc / (1 + (k-1)*icc), and so how many replicates a target reliability needs.
Input everywhere: ``y``, an array [M masks, R replicates] of fitness values, NaN marking a failed training.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
from scipy import stats

from evo_sparse.stats.analysis import _clean  # a float for JSON, None for NaN or inf

_CHUNK_ELEMENTS = 4_000_000  # bootstrap resamples are processed in chunks of at most this many values


def _as_matrix(y: Any) -> np.ndarray:
    a = np.asarray(y, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"y must be a 2-D array [masks, replicates], got shape {a.shape}")
    return a


def complete_rows(y: Any) -> tuple[np.ndarray, int]:
    """The rows of ``y`` without NaN (a balanced design is needed), and how many rows were dropped."""
    a = _as_matrix(y)
    keep = ~np.isnan(a).any(axis=1)
    return a[keep], int((~keep).sum())


def _mean_squares(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grand mean, MSB and MSW over the last two axes of ``ys`` [..., M, R] (balanced, no NaN, M >= 2, R >= 2).

    Values are shifted by each matrix's first value first (ANOVA is shift-invariant), so that an all-equal matrix gives
    exactly zero mean squares rather than rounding noise.
    """
    m, r = ys.shape[-2], ys.shape[-1]
    ref = ys[..., :1, :1]
    d = ys - ref
    row = d.mean(axis=-1)
    grand = row.mean(axis=-1)
    msb = r * ((row - grand[..., None]) ** 2).sum(axis=-1) / (m - 1)
    msw = ((d - row[..., None]) ** 2).sum(axis=(-2, -1)) / (m * (r - 1))
    return grand + ref[..., 0, 0], msb, msw


def _balanced(y: Any) -> np.ndarray:
    a, _ = complete_rows(y)
    m, r = a.shape
    if r < 2:
        raise ValueError(f"need at least 2 replicates per mask, got {r}")
    if m < 2:
        raise ValueError(f"need at least 2 masks with every replicate present (no NaN), got {m}")
    return a


def variance_components(y: Any) -> dict[str, float | int]:
    """One-way random-effects ANOVA of the complete rows of ``y``.

    Returns ``mean`` (grand mean), ``msb`` = R*sum((mean_i - grand)^2)/(M-1), ``msw`` = sum((y_ij - mean_i)^2)/(M(R-1)),
    ``between_var`` = max(0, (MSB-MSW)/R), ``within_var`` = MSW, their square roots ``between_sd`` and ``within_sd``,
    ``masks`` M and ``replicates`` R. Raises ValueError when fewer than 2 complete rows or 2 replicates remain.
    """
    a = _balanced(y)
    m, r = a.shape
    grand, msb, msw = (float(v) for v in _mean_squares(a))
    between_var = max(0.0, (msb - msw) / r)
    return {
        "mean": grand,
        "msb": msb,
        "msw": msw,
        "between_var": between_var,
        "within_var": msw,
        "between_sd": math.sqrt(between_var),
        "within_sd": math.sqrt(msw),
        "masks": int(m),
        "replicates": int(r),
    }


def _icc_from(msb: np.ndarray, msw: np.ndarray, r: int) -> np.ndarray:
    den = msb + (r - 1) * msw
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (msb - msw) / np.where(den > 0, den, 1.0), np.nan)


def icc1(y: Any) -> float:
    """ICC(1) = (MSB - MSW) / (MSB + (R-1)*MSW) of the complete rows of ``y``; may be negative; nan when the
    denominator is 0 (all values equal). Raises ValueError like :func:`variance_components`."""
    a = _balanced(y)
    _, msb, msw = _mean_squares(a)
    return float(_icc_from(msb, msw, a.shape[1]))


def spearman_brown(icc: float, k: float) -> float:
    """Reliability of the mean of ``k`` replicates given the single-replicate ICC: k*icc / (1 + (k-1)*icc); nan when
    ``icc`` is nan or the denominator is 0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if icc is None or not math.isfinite(icc):
        return math.nan
    den = 1 + (k - 1) * icc
    return math.nan if den == 0 else k * icc / den


def replicates_needed(icc: float, target: float = 0.7) -> int | None:
    """The smallest integer k >= 1 with ``spearman_brown(icc, k) >= target`` (0 < target < 1); None when ``icc`` <= 0
    or is nan, since no number of replicates then reaches the target."""
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target}")
    if icc is None or not math.isfinite(icc) or icc <= 0:
        return None
    if icc >= 1:
        return 1
    return max(1, math.ceil(target * (1 - icc) / (icc * (1 - target)) - 1e-9))


def bootstrap_icc(y: Any, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile ``level`` CI of ICC(1), resampling the complete rows (masks) of ``y`` with replacement
    (``numpy.random.default_rng(seed)``); resamples whose ICC is nan are dropped; (nan, nan) when none is left."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    a = _balanced(y)
    m, r = a.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(n_boot, m))
    chunk = max(1, _CHUNK_ELEMENTS // (m * r))
    iccs = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        ys = a[idx[start : start + chunk]]  # [chunk, M, R]
        _, msb, msw = _mean_squares(ys)
        iccs[start : start + chunk] = _icc_from(msb, msw, r)
    iccs = iccs[np.isfinite(iccs)]
    if iccs.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    lo, hi = np.quantile(iccs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_pairwise_spearman(y: Any) -> float:
    """Mean Spearman ρ between every pair of replicate columns over the complete rows of ``y``; pairs whose ρ is
    undefined (a constant column) are left out; nan when no pair is defined or fewer than 2 complete rows remain."""
    a, _ = complete_rows(y)
    if a.shape[0] < 2 or a.shape[1] < 2:
        return math.nan
    rhos = []
    for i, j in itertools.combinations(range(a.shape[1]), 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho, _ = stats.spearmanr(a[:, i], a[:, j])
        if math.isfinite(rho):
            rhos.append(float(rho))
    return float(np.mean(rhos)) if rhos else math.nan


def reliability(y: Any, *, target: float = 0.7, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Everything a report needs, as plain JSON-able values (None for anything undefined, never NaN): ``masks``
    (complete rows used), ``dropped``, ``replicates``, ``mean``, ``between_sd``, ``within_sd``, ``icc``, ``icc_ci``
    [lo, hi], ``reliability_of_mean`` (Spearman–Brown at R), ``spearman`` (mean pairwise), ``replicates_for_target``
    and ``target``. Raises ValueError like :func:`variance_components`."""
    a, dropped = complete_rows(y)
    vc = variance_components(a)
    r = vc["replicates"]
    icc = float(_icc_from(np.float64(vc["msb"]), np.float64(vc["msw"]), r))
    lo, hi = bootstrap_icc(a, n_boot=n_boot, seed=seed)
    return {
        "masks": vc["masks"],
        "dropped": dropped,
        "replicates": r,
        "mean": _clean(vc["mean"]),
        "between_sd": _clean(vc["between_sd"]),
        "within_sd": _clean(vc["within_sd"]),
        "icc": _clean(icc),
        "icc_ci": [_clean(lo), _clean(hi)],
        "reliability_of_mean": _clean(spearman_brown(icc, r)),
        "spearman": _clean(mean_pairwise_spearman(a)),
        "replicates_for_target": replicates_needed(icc, target),
        "target": float(target),
    }


def run_noise(rows: list[dict[str, Any]], *, target: float = 0.7) -> dict[str, Any]:
    """The fitness noise a run measured itself, from its journal ``rows``: with ``--replicates R`` >= 2 the replicate
    fitness values of every successful evaluation of a distinct mask form the [masks, R] matrix of ``reliability``
    (bootstrap skipped), plus ``fitness_sd`` (the standard deviation of one fitness value, a mean of R trainings:
    within_sd / sqrt(R)) and ``difference_95`` (1.96 · sqrt(2) · fitness_sd: two fitness values closer than this are
    not told apart at the 95% level). ``measured`` is False, with ``why``, when the run has no replicates."""
    seen: dict[str, list[float]] = {}
    for row in rows:
        values = row.get("replicate_fitness")
        if row.get("status") == "ok" and values and len(values) >= 2:
            seen.setdefault(row.get("mask", str(len(seen))), values)
    if len(seen) < 2:
        return {
            "measured": False,
            "why": "one training per fitness (--replicates 1): this run cannot see its own noise; "
            "`evo-sparse fidelity` measures it, and --replicates R >= 2 makes runs report it",
        }
    r = min(len(v) for v in seen.values())
    matrix = [v[:r] for v in seen.values()]
    out = reliability(matrix, target=target, n_boot=1)
    sd = out["within_sd"] / math.sqrt(r)
    return {"measured": True, **{k: out[k] for k in _NOISE_KEYS}, "fitness_sd": sd, "difference_95": 1.96 * sd * 2**0.5}


_NOISE_KEYS = ("masks", "replicates", "between_sd", "within_sd", "icc", "reliability_of_mean", "target")


def noise_line(noise: dict[str, Any]) -> str:
    """``run_noise`` in one line for people."""
    if not noise["measured"]:
        return f"noise    not measured: {noise['why']}"
    rel = noise["reliability_of_mean"]
    return (
        f"noise    one fitness (mean of {noise['replicates']} trainings) has sd {noise['fitness_sd']:.4f}; fitness "
        f"values closer than {noise['difference_95']:.4f} are not told apart (95%); masks differ by sd "
        f"{noise['between_sd']:.4f}; reliability {'-' if rel is None else format(rel, '.2f')} "
        f"(from {noise['masks']} masks)"
    )
