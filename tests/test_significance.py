"""Exact rank tests with ties, intervals, and the statistics of the study built on them: checked against brute-force
enumeration of every split or sign flip, scipy's exact methods where there are no ties, and hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from evo_sparse.stats import analysis, measurement, significance


def enumerated_mann_whitney(a, b) -> float:
    """Two-sided p = 2·min(P(R ≤ r), P(R ≥ r)) of a's midrank sum, over every one of the C(n+m, n) splits."""
    ranks = stats.rankdata(np.concatenate([a, b]))
    observed = ranks[: len(a)].sum()
    sums = np.array([ranks[list(c)].sum() for c in itertools.combinations(range(len(ranks)), len(a))])
    return min(1.0, 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9)))


def enumerated_wilcoxon(d) -> float:
    """Two-sided p of W+ over every one of the 2^n sign flips of the nonzero differences (zeros dropped)."""
    d = np.asarray([x for x in d if x != 0], float)
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    sums = np.array([ranks[np.array(signs, bool)].sum() for signs in itertools.product((0, 1), repeat=len(d))])
    return min(1.0, 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9)))


def enumerated_stratified(strata) -> float:
    """Two-sided p of the summed within-stratum midrank sums of ``a``, over every split of every stratum."""
    per = []
    for a, b in strata:
        ranks = stats.rankdata(np.concatenate([a, b]))
        per.append(
            (ranks[: len(a)].sum(), [ranks[list(c)].sum() for c in itertools.combinations(range(len(ranks)), len(a))])
        )
    observed = sum(o for o, _ in per)
    sums = np.array([sum(c) for c in itertools.product(*(s for _, s in per))])
    return min(1.0, 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9)))


@pytest.mark.parametrize(
    "a, b, exact, normal",
    [
        ([0.60, 0.61, 0.62], [0.59, 0.60, 0.58], 0.2, 0.121),  # one tie across the groups
        ([0.70, 0.71, 0.72, 0.73, 0.74], [0.60, 0.61, 0.62, 0.63, 0.64, 0.65, 0.65], 2 / 792, 0.0057),  # separated
    ],
)
def test_mann_whitney_is_exact_with_ties(a, b, exact, normal):
    out = significance.mann_whitney(a, b)
    assert enumerated_mann_whitney(a, b) == pytest.approx(exact)
    assert out["p_value"] == pytest.approx(exact, rel=1e-12) and out["method"] == "exact"
    assert out["u"] == stats.mannwhitneyu(a, b).statistic
    assert stats.mannwhitneyu(a, b).pvalue == pytest.approx(normal, abs=5e-4)  # scipy's "auto" falls back to normal
    assert analysis.two_groups(a, b)["p_value"] == out["p_value"]  # what the study reports


def test_mann_whitney_matches_scipy_exact_without_ties_and_enumeration_with_them():
    rng = np.random.default_rng(0)
    for n, m in ((1, 4), (3, 3), (4, 7), (8, 5), (10, 10), (25, 30)):
        a, b = rng.random(n), rng.random(m) + 0.1
        out = significance.mann_whitney(a, b)
        assert out["p_value"] == pytest.approx(stats.mannwhitneyu(a, b, method="exact").pvalue, rel=1e-9), (n, m)
        assert out["min_p"] == pytest.approx(min(1.0, 2 / math.comb(n + m, n)))
    for n, m in ((2, 3), (4, 4), (6, 3), (5, 6)):  # heavy ties, the larger group first or second
        a, b = np.round(rng.random(n), 1), np.round(rng.random(m) / 2 + 0.3, 1)
        assert significance.mann_whitney(a, b)["p_value"] == pytest.approx(enumerated_mann_whitney(a, b), rel=1e-9)
    same = [0.5 + 0.1, 0.7]  # 0.6 computed two ways is still a tie
    assert significance.mann_whitney(same, [0.6, 0.4])["p_value"] == pytest.approx(
        enumerated_mann_whitney([0.6, 0.7], [0.6, 0.4])
    )


def test_mann_whitney_beyond_the_exact_limit_resamples_with_a_seed():
    rng = np.random.default_rng(1)
    a, b = np.round(rng.random(12), 1), np.round(rng.random(9) + 0.2, 1)
    exact = significance.mann_whitney(a, b)["p_value"]
    out = significance.mann_whitney(a, b, exact_work=0, resamples=20_000, seed=3)
    assert out["method"] == "permutation" and out["resamples"] == 20_000 and out["min_p"] is None
    assert out["p_value"] == pytest.approx(exact, abs=0.02)
    assert significance.mann_whitney(a, b, exact_work=0, resamples=20_000, seed=3) == out  # seeded
    with pytest.raises(ValueError, match="non-empty"):
        significance.mann_whitney([], [0.1])


def test_wilcoxon_signed_rank_exact_with_ties_and_zeros():
    # |d| ranks 1.5, 1.5, 3, 4 (the zero dropped); W+ = 7; of the 16 sign flips, 5 give W+ >= 7: p = 2 * 5/16
    d = [0.1, 0.1, -0.2, 0.3, 0.0]
    out = significance.wilcoxon_signed_rank(d)
    assert out["w_plus"] == 7 and out["zeros"] == 1 and out["n"] == 5 and out["method"] == "exact"
    assert out["p_value"] == pytest.approx(0.625) == enumerated_wilcoxon(d)
    assert out["min_p"] == pytest.approx(2 / 16)
    rng = np.random.default_rng(2)
    for n in (1, 4, 9, 14):
        x = rng.normal(0.3, 1, n)  # no ties, no zeros: scipy's exact method
        assert significance.wilcoxon_signed_rank(x)["p_value"] == pytest.approx(
            stats.wilcoxon(x, method="exact").pvalue, rel=1e-9
        )
        tied = np.round(rng.normal(0.2, 1, n + 3), 0)  # ties and zeros
        assert significance.wilcoxon_signed_rank(tied)["p_value"] == pytest.approx(enumerated_wilcoxon(tied))
    assert significance.wilcoxon_signed_rank([0.0, 0.0])["p_value"] == 1.0  # no pair differs: no evidence at all
    assert "no pair differs" in significance.wilcoxon_signed_rank([0.0, 0.0])["note"]
    many = np.round(rng.normal(0.3, 1, 30), 1)
    resampled = significance.wilcoxon_signed_rank(many, exact_pairs=10, resamples=20_000)
    assert resampled["method"] == "permutation"
    assert resampled["p_value"] == pytest.approx(significance.wilcoxon_signed_rank(many)["p_value"], abs=0.02)


def test_stratified_rank_sum_counts_every_split_within_strata():
    strata = [
        ([0.61, 0.63, 0.60], [0.58, 0.60, 0.59]),  # a tie across the groups
        ([0.50, 0.52], [0.49, 0.51, 0.47]),  # unequal sizes
        ([0.70, 0.72, 0.71], [0.72, 0.69, 0.68]),
    ]
    out = significance.stratified_rank_sum(strata)
    assert out["method"] == "exact" and out["strata"] == 3
    assert out["p_value"] == pytest.approx(enumerated_stratified(strata))
    assert out["w"] == pytest.approx(sum(stats.rankdata(np.concatenate(s))[: len(s[0])].sum() for s in strata))
    assert out["expected_w"] == pytest.approx(3 * 7 / 2 + 2 * 6 / 2 + 3 * 7 / 2)
    assert 0 < out["min_p"] <= out["p_value"] <= 1
    one = strata[:1]  # one stratum is the exact Mann-Whitney U test
    assert significance.stratified_rank_sum(one)["p_value"] == pytest.approx(
        significance.mann_whitney(*one[0])["p_value"]
    )
    # A shift that is the same in every stratum but smaller than the differences between strata: the pooled test
    # misses it, the stratified one does not.
    shifted = [
        ([base + 0.011 + 0.001 * i for i in range(4)], [base + 0.001 * i for i in range(4)]) for base in (0.5, 0.6, 0.7)
    ]
    pooled = significance.mann_whitney(sum((a for a, _ in shifted), []), sum((b for _, b in shifted), []))
    assert significance.stratified_rank_sum(shifted)["p_value"] < 0.01 < pooled["p_value"]
    assert significance.stratified_rank_sum([([0.5], [])])["note"] == "no stratum has values of both groups"


def test_welch_and_paired_intervals_match_scipy():
    a, b = [0.61, 0.64, 0.60, 0.66], [0.58, 0.60, 0.57]
    out = significance.mean_difference(a, b)
    t = stats.ttest_ind(a, b, equal_var=False)
    assert out["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert out["ci"] == pytest.approx(list(t.confidence_interval(0.95)))
    assert out["se"] == pytest.approx(math.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 3))
    assert out["df"] == pytest.approx(t.df)
    assert significance.mean_difference([0.5], [0.4, 0.3])["se"] is None
    assert significance.mean_difference([0.5, 0.5], [0.4, 0.4])["ci"] == pytest.approx([0.1, 0.1])
    d = [0.02, 0.01, 0.03, -0.005]
    p = significance.paired(d)
    assert p["ci"] == pytest.approx(list(stats.ttest_1samp(d, 0).confidence_interval(0.95)))
    assert p["median_diff"] == pytest.approx(0.015) and p["n"] == 4 and p["p_value"] == pytest.approx(0.25)


def masks(kind, seed, finals, *, early=0.3):
    return [
        {"kind": kind, "seed": seed, "index": i, "early_fitness": early + 0.01 * i, "early_fitness_heldout": None,
         "final_test_acc": float(np.mean(accs)), "test_accs": list(accs), "val_curves": [[0.1, a] for a in accs]}
        for i, accs in enumerate(finals)
    ]  # fmt: skip


def test_noise_ceiling_is_the_pooled_within_mask_std():
    group = masks("found", 0, [[0.6, 0.8], [0.70, 0.72, 0.74], [0.5]])  # sums of squares 0.02 and 0.0008, df 1 + 2
    out = analysis.noise_ceiling(group)
    assert out["std"] == pytest.approx(math.sqrt(0.0208 / 3)) and out["masks"] == 2 and out["df"] == 3
    assert out["std"] != pytest.approx((math.sqrt(0.02) + 0.02) / 2)  # not the mean of the stds


def test_variance_components_tell_masks_apart_only_when_they_differ():
    spread = [[0.60, 0.61], [0.70, 0.71], [0.80, 0.79], [0.65, 0.66, 0.64]]  # masks far apart, seeds close
    out = analysis.variance_components(masks("found", 0, spread) + masks("random", 0, [[0.5, 0.6], [0.6, 0.5]]))
    found = out["found"]
    assert found["masks"] == 4 and found["replicates"] == 2 and found["note"] is None  # each mask's first 2 seeds
    assert found["icc"] == pytest.approx(measurement.icc1([s[:2] for s in spread])) and found["icc"] > 0.9
    assert out["random"]["icc"] < 0 and out["both"]["masks"] == 6  # random: the seeds differ more than the masks
    assert found["icc_ci"][0] <= found["icc"] <= found["icc_ci"][1]
    few = analysis.variance_components(masks("found", 0, [[0.6], [0.7, 0.8]]))
    assert few["found"]["note"] and few["found"]["masks"] == 1 and few["random"]["masks"] == 0


def row(kind, index, final, *, seed, train_seed=0, early=0.3):
    return {"sparsity": 0.5, "seed": seed, "kind": kind, "index": index, "train_seed": train_seed,
            "early_fitness": early, "final_test_acc": final, "val_acc": [final / 2, final], "status": "ok"}  # fmt: skip


def test_analyse_reports_paired_tests_intervals_and_per_kind_correlations():
    rows = []
    for seed, lift in ((0, 0.05), (1, 0.02), (2, 0.04)):
        for i in range(3):
            for t, noise in ((0, 0.0), (1, 0.004)):
                rows.append(
                    row("found", i, 0.6 + lift + 0.001 * i + noise, seed=seed, train_seed=t, early=lift + 0.001 * i)
                )
                rows.append(row("random", i, 0.6 + 0.02 * i + noise, seed=seed, train_seed=t, early=0.3 - 0.01 * i))
    s = analysis.analyse(rows)["sparsities"][0]
    pair = s["paired"]
    assert pair["seeds"] == [0, 1, 2] and pair["differences"] == pytest.approx([0.031, 0.001, 0.021])
    assert pair["p_value"] == pytest.approx(0.25) == pair["min_p"] and pair["method"] == "exact"  # 3 pairs: 2/8
    found = [m["final_test_acc"] for m in analysis.masks_of(rows) if m["kind"] == "found"]
    random = [m["final_test_acc"] for m in analysis.masks_of(rows) if m["kind"] == "random"]
    welch = stats.ttest_ind(found, random, equal_var=False)
    assert s["found_minus_random"] == pytest.approx(np.mean(found) - np.mean(random))
    assert s["found_minus_random_ci"] == pytest.approx(list(welch.confidence_interval(0.95)))
    assert s["found_minus_random_se"] > 0 and s["p_method"] == "exact" and 0 < s["p_min"] <= s["p_value"]
    assert s["p_value"] == pytest.approx(enumerated_mann_whitney(found, random))
    by_kind = s["early_vs_final"]["by_kind"]
    assert by_kind["found"]["kendall_tau"] == pytest.approx(1.0) and by_kind["random"]["kendall_tau"] == pytest.approx(
        -1.0
    )
    assert by_kind["found"]["kendall_tau_ci"] is not None and by_kind["found"]["n"] == 9
    assert s["noise_ceiling"]["std"] == pytest.approx(math.sqrt(0.004**2 / 2))  # every mask: two seeds 0.004 apart
    assert s["variance_components"]["found"]["replicates"] == 2 and s["variance_components"]["both"]["masks"] == 18
    within = s["within_seed"]
    assert within["seeds"] == [0, 1, 2] and within["strata"] == 3 and within["method"] == "exact"
    masks = analysis.masks_of(rows)
    accs = {(m["seed"], m["kind"]): [] for m in masks}
    for m in masks:
        accs[m["seed"], m["kind"]].append(round(m["final_test_acc"], 9))  # rounded: float sums would break ties
    by_seed = [(accs[k, "found"], accs[k, "random"]) for k in range(3)]
    assert within["p_value"] == pytest.approx(enumerated_stratified(by_seed)) and within["p_value"] < pair["p_value"]
    assert "paired p=0.250 (n=3)" in analysis.format_analysis(analysis.analyse(rows))


def test_algorithms_are_also_compared_paired_by_seed():
    finals = {"weedout": [0.50, 0.55, 0.52, 0.60], "ga": [0.56, 0.58, 0.57]}
    by_seed = {"weedout": {0: 0.50, 1: 0.55, 2: 0.52, 3: 0.60}, "ga": {0: 0.56, 1: 0.58, 3: 0.57}}  # ga seed 2 failed
    test = analysis.compare_algorithms(finals, by_seed=by_seed)[0]
    assert test["paired"]["seeds"] == [0, 1, 3] and test["paired"]["differences"] == pytest.approx([0.06, 0.03, -0.03])
    assert test["paired"]["p_value"] == pytest.approx(enumerated_wilcoxon([0.06, 0.03, -0.03]))
    assert test["difference_ci"][0] < test["difference"] < test["difference_ci"][1]
    assert test["p_value"] == pytest.approx(enumerated_mann_whitney(finals["ga"], finals["weedout"]))
    assert "paired" not in analysis.compare_algorithms(finals)[0]  # without seeds, no pairing


def test_groups_of_equal_values_give_p_one():
    from evo_sparse.stats import analysis

    test = analysis.two_groups([0.1, 0.1], [0.1, 0.1])
    assert test["p_value"] == 1.0 and "every value is equal" in test["note"]
