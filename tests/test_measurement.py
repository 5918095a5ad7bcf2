"""ICC(1), its bootstrap CI, replicate agreement and Spearman–Brown (evo_sparse.stats.measurement)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evo_sparse.stats.measurement import (
    bootstrap_icc,
    complete_rows,
    icc1,
    mean_pairwise_spearman,
    reliability,
    replicates_needed,
    spearman_brown,
    variance_components,
)

# y = [[1, 2], [3, 5], [6, 6]]: M = 3, R = 2. Row means 3/2, 4, 6; grand mean 23/6.
# Deviations of the row means: -14/6, 1/6, 13/6; squares sum to (196 + 1 + 169)/36 = 61/6.
# MSB = R * 61/6 / (M-1) = 2 * 61/6 / 2 = 61/6.
# Within squares: (1/4 + 1/4) + (1 + 1) + (0 + 0) = 5/2; MSW = 5/2 / (M(R-1)) = 5/6.
# between_var = (61/6 - 5/6) / 2 = 14/3; ICC = (61/6 - 5/6) / (61/6 + 5/6) = 56/66 = 28/33.
HAND = [[1.0, 2.0], [3.0, 5.0], [6.0, 6.0]]


def _simulate(between_sd: float, within_sd: float, *, masks: int = 400, reps: int = 3, seed: int = 0) -> np.ndarray:
    """Fitness = 0.9 + mask effect + training noise. Over 100 seeds the 95% bootstrap CI covered the true ICC 95 times
    (0.8 at sd 0.02/0.01) and 96 times (0 at sd 0/0.01), with sd(ICC) = 0.015 at 0.8: the fixed seeds here are
    typical."""
    rng = np.random.default_rng(seed)
    mask_effect = rng.normal(0.0, between_sd, size=(masks, 1))
    return 0.9 + mask_effect + rng.normal(0.0, within_sd, size=(masks, reps))


def test_hand_computed_case():
    vc = variance_components(HAND)
    assert vc["masks"] == 3 and vc["replicates"] == 2
    assert vc["mean"] == pytest.approx(23 / 6)
    assert vc["msb"] == pytest.approx(61 / 6)
    assert vc["msw"] == pytest.approx(5 / 6)
    assert vc["between_var"] == pytest.approx(14 / 3)
    assert vc["within_var"] == pytest.approx(5 / 6)
    assert vc["between_sd"] == pytest.approx(math.sqrt(14 / 3))
    assert vc["within_sd"] == pytest.approx(math.sqrt(5 / 6))
    assert icc1(HAND) == pytest.approx(28 / 33)


def test_negative_icc_and_clipped_between_variance():
    # Rows share one mean, so MSB = 0 < MSW: ICC = -MSW / ((R-1) MSW) = -1 and between_var clips to 0.
    y = [[0.0, 2.0], [2.0, 0.0], [1.0, 1.0]]
    assert icc1(y) == pytest.approx(-1.0)
    assert variance_components(y)["between_var"] == 0.0


def test_all_equal_values_give_nan_icc():
    y = np.full((5, 3), 0.1)
    assert math.isnan(icc1(y))
    assert all(math.isnan(v) for v in bootstrap_icc(y, n_boot=50))
    out = reliability(y, n_boot=50)
    assert out["icc"] is None and out["icc_ci"] == [None, None] and out["replicates_for_target"] is None
    json.dumps(out, allow_nan=False)


def test_simulation_recovers_known_components():
    y = _simulate(0.02, 0.01)  # true ICC = 0.0004 / (0.0004 + 0.0001) = 0.8
    vc = variance_components(y)
    assert icc1(y) == pytest.approx(0.8, abs=0.05)
    assert vc["between_sd"] == pytest.approx(0.02, rel=0.10)
    assert vc["within_sd"] == pytest.approx(0.01, rel=0.10)
    lo, hi = bootstrap_icc(y, n_boot=2000, seed=0)
    assert lo < icc1(y) < hi
    assert lo <= 0.8 <= hi


def test_null_simulation_icc_near_zero():
    y = _simulate(0.0, 0.01, seed=2)
    assert icc1(y) == pytest.approx(0.0, abs=0.1)
    lo, hi = bootstrap_icc(y, n_boot=2000, seed=0)
    assert lo <= 0.0 <= hi
    assert replicates_needed(icc1(y)) is None or replicates_needed(icc1(y)) > 10


def test_bootstrap_is_seeded_and_level_widens():
    y = _simulate(0.02, 0.01, masks=60)
    assert bootstrap_icc(y, n_boot=500, seed=3) == bootstrap_icc(y, n_boot=500, seed=3)
    lo90, hi90 = bootstrap_icc(y, n_boot=500, seed=3, level=0.90)
    lo99, hi99 = bootstrap_icc(y, n_boot=500, seed=3, level=0.99)
    assert lo99 <= lo90 < hi90 <= hi99


def test_spearman_brown_and_replicates_needed():
    assert spearman_brown(0.25, 7) == pytest.approx(7 * 0.25 / (1 + 6 * 0.25))  # = 0.7
    assert spearman_brown(0.25, 7) == pytest.approx(0.7)
    assert spearman_brown(0.3, 1) == pytest.approx(0.3)
    # 0.7 * 0.75 / (0.25 * 0.3) is 7 exactly but 6.999999999999998 in floats: the answer must still be 7, not 8 or 6.
    assert replicates_needed(0.25, 0.7) == 7
    assert spearman_brown(0.25, 6) < 0.7
    assert replicates_needed(0.8, 0.7) == 1
    assert replicates_needed(1.0) == 1
    assert replicates_needed(0.0) is None
    assert replicates_needed(-0.1) is None
    assert replicates_needed(math.nan) is None
    for icc in (0.05, 0.1, 0.33, 0.5, 0.6):
        k = replicates_needed(icc, 0.8)
        assert spearman_brown(icc, k) >= 0.8 - 1e-12
        assert k == 1 or spearman_brown(icc, k - 1) < 0.8


def test_nan_rows_dropped_and_counted():
    y = np.array(HAND + [[np.nan, 1.0], [2.0, np.nan]])
    kept, dropped = complete_rows(y)
    assert dropped == 2
    np.testing.assert_array_equal(kept, HAND)
    assert icc1(y) == pytest.approx(28 / 33)
    out = reliability(y, n_boot=100)
    assert out["masks"] == 3 and out["dropped"] == 2 and out["replicates"] == 2


def test_too_little_data_raises():
    with pytest.raises(ValueError, match="2 masks"):
        variance_components([[1.0, 2.0], [np.nan, 3.0]])
    with pytest.raises(ValueError, match="2 replicates"):
        variance_components([[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="2 replicates"):
        icc1([[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError):
        variance_components([1.0, 2.0, 3.0])


def test_mean_pairwise_spearman():
    x = np.arange(10.0)
    assert mean_pairwise_spearman(np.column_stack([x, x, x])) == pytest.approx(1.0)
    assert mean_pairwise_spearman(np.column_stack([x, x[::-1]])) == pytest.approx(-1.0)
    assert math.isnan(mean_pairwise_spearman(np.column_stack([x, np.ones(10)])))


def test_reliability_report_is_plain_json():
    y = _simulate(0.02, 0.01, masks=50, reps=3)
    y[0, 1] = np.nan
    out = reliability(y, target=0.9, n_boot=200, seed=0)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert set(out) == {
        "masks", "dropped", "replicates", "mean", "between_sd", "within_sd", "icc", "icc_ci",
        "reliability_of_mean", "spearman", "replicates_for_target", "target",
    }  # fmt: skip
    assert out["masks"] == 49 and out["dropped"] == 1 and out["replicates"] == 3 and out["target"] == 0.9
    assert all(type(v) in (int, float, list) for v in out.values())
    lo, hi = out["icc_ci"]
    assert lo < out["icc"] < hi
    assert out["reliability_of_mean"] == pytest.approx(spearman_brown(out["icc"], 3))
    assert out["replicates_for_target"] == replicates_needed(out["icc"], 0.9)
