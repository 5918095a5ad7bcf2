"""Statistics of the paper experiment on fabricated rows: known values, per-mask units, and tiny samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from evo_sparse.stats import analysis


def row(kind, index, final, *, sparsity=0.5, seed=0, train_seed=0, early=0.3, heldout=None, curve=None):
    return {
        "sparsity": sparsity,
        "seed": seed,
        "kind": kind,
        "index": index,
        "train_seed": train_seed,
        "early_fitness": early,
        "early_fitness_heldout": heldout,
        "final_test_acc": final,
        "val_acc": curve or [final / 2, final],
        "status": "ok",
    }


def test_cliffs_delta_and_mann_whitney_on_separated_groups():
    out = analysis.two_groups([0.9, 0.8, 0.85], [0.1, 0.2, 0.15])
    assert out["cliffs_delta"] == 1.0  # every a above every b
    assert out["p_value"] == pytest.approx(0.1)  # the smallest exact two-sided p for 3 vs 3
    assert out["a"]["n"] == 3 and out["a"]["mean"] == pytest.approx(0.85) and out["note"] is None
    assert analysis.two_groups([0.1, 0.2], [0.1, 0.2])["cliffs_delta"] == 0.0


def test_tiny_samples_give_none_with_a_note_never_a_crash():
    one = analysis.two_groups([0.5], [0.4, 0.3])
    assert one["p_value"] is None and one["cliffs_delta"] is None and "at least 2" in one["note"]
    assert one["a"]["std"] is None and one["a"]["mean"] == 0.5
    empty = analysis.two_groups([], [])
    assert empty["a"]["mean"] is None and empty["p_value"] is None
    corr = analysis.rank_correlation([0.1, 0.2], [0.3, 0.4])
    assert corr["kendall_tau"] is None and "at least 3" in corr["note"]
    flat = analysis.rank_correlation([0.1, 0.1, 0.1], [0.3, 0.4, 0.5])
    assert flat["spearman_rho"] is None and "constant" in flat["note"]
    assert analysis.noise_ceiling([{"test_accs": [0.5]}])["std"] is None
    nothing = analysis.analyse([])
    assert nothing["sparsities"] == [] and nothing["dense"]["n"] == 0 and nothing["dense"]["mean"] is None


def test_rank_correlation_with_seeded_bootstrap_intervals():
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    y = [0.15, 0.1, 0.35, 0.3, 0.55, 0.6]
    a = analysis.rank_correlation(x, y, seed=3, n_boot=300)
    assert a["kendall_tau"] == pytest.approx(11 / 15)  # 13 concordant, 2 discordant pairs of 15
    assert a["n"] == 6 and a["kendall_tau_p"] is not None
    low, high = a["kendall_tau_ci"]
    assert -1 <= low <= high <= 1
    assert analysis.rank_correlation(x, y, seed=3, n_boot=300) == a  # same seed, same intervals
    assert analysis.rank_correlation(x, y, seed=4, n_boot=300)["kendall_tau_ci"] != a["kendall_tau_ci"]


def test_masks_are_the_unit_training_seeds_are_averaged():
    rows = [row("found", 0, 0.6, train_seed=0), row("found", 0, 0.8, train_seed=1), row("found", 1, 0.5)]
    masks = analysis.masks_of(rows + [dict(row("random", 0, 0.2), status="failed")])
    assert [(m["kind"], m["index"]) for m in masks] == [("found", 0), ("found", 1)]
    assert masks[0]["final_test_acc"] == pytest.approx(0.7) and masks[0]["test_accs"] == [0.6, 0.8]
    ceiling = analysis.noise_ceiling(masks)
    assert ceiling["masks"] == 1 and ceiling["std"] == pytest.approx(math.sqrt(0.02))


def test_analyse_per_sparsity_found_vs_random():
    rows = [row("dense", 0, 0.9, sparsity=0.0, seed=s) for s in (0, 1)]
    for s in (0.5, 0.9):
        rows += [row("found", i, 0.7 + 0.01 * i, sparsity=s, early=0.5 + 0.01 * i) for i in range(4)]
        rows += [row("random", i, 0.6 + 0.01 * i, sparsity=s, early=0.3 + 0.01 * i) for i in range(4)]
    out = analysis.analyse(rows)
    assert out["dense"]["n"] == 2 and out["dense"]["mean"] == pytest.approx(0.9)
    assert [s["sparsity"] for s in out["sparsities"]] == [0.5, 0.9]
    first = out["sparsities"][0]
    assert first["found"]["n"] == 4 and first["found_minus_random"] == pytest.approx(0.1)
    assert first["cliffs_delta"] == 1.0 and first["p_value"] < 0.05
    assert first["early_vs_final"]["kendall_tau"] == pytest.approx(1.0)  # early order = final order here
    assert out["early_measure"] == first["early_vs_final"]["early_measure"] == "search"  # no held-out values
    assert first["noise_ceiling"]["std"] is None  # one training seed each


def test_convergence_counts_epochs_to_the_target():
    assert analysis.epochs_to([0.1, 0.5, 0.9], 0.5) == 2 and analysis.epochs_to([0.1, 0.2], 0.5) is None
    fast = [{"val_curves": [[0.8, 0.9, 0.9]]} for _ in range(3)]
    slow = [{"val_curves": [[0.2, 0.5, 0.9]]} for _ in range(3)]
    out = analysis.convergence(fast, slow, fraction=0.9)
    assert out["target"] == pytest.approx(0.81)
    assert out["found_epochs"]["mean"] == 2 and out["random_epochs"]["mean"] == 3
    assert out["found_reached"] == 1.0 and out["cliffs_delta"] == -1.0
    never = analysis.convergence([{"val_curves": [[0.1, 0.1]]}] * 2, [{"val_curves": [[0.9, 0.9]]}] * 2)
    assert never["found_reached"] == 0.0 and never["found_epochs"]["mean"] == 3  # censored at epochs + 1


def test_best_so_far_bands_and_algorithm_tests():
    assert analysis.best_so_far([0.1, None, 0.3, 0.2]) == [0.1, 0.1, 0.3, 0.3]
    assert analysis.best_so_far([None, 0.2]) == [None, 0.2]
    band = analysis.curve_band([[0.1, 0.2], [0.3, 0.4]])
    assert band["mean"] == pytest.approx([0.2, 0.3]) and band["low"][0] < 0.2 < band["high"][0]
    assert analysis.curve_band([[0.1, 0.2]])["low"] == [None, None]
    assert analysis.curve_band([[0.1, 0.2, 0.3], [0.3]])["mean"] == pytest.approx([0.2, 0.2, 0.3])  # a short run
    tests = analysis.compare_algorithms({"weedout": [0.5, 0.6, 0.55], "ga": [0.7, 0.8, 0.75]})
    assert tests[0]["algorithm"] == "ga" and tests[0]["baseline"] == "weedout"
    assert tests[0]["cliffs_delta"] == 1.0 and tests[0]["difference"] == pytest.approx(0.2)


def test_vectorised_bootstrap_statistics_match_scipy():
    rng = np.random.default_rng(0)
    x = np.round(rng.random(12), 1)  # rounded: ties, so τ-b's tie correction is exercised
    y = np.round(x + rng.random(12) / 2, 1)
    idx = rng.integers(0, 12, size=(40, 12))
    boot = analysis._bootstrap(x, y, idx)
    tau = [stats.kendalltau(x[i], y[i]).statistic for i in idx]
    rho = [stats.spearmanr(x[i], y[i]).statistic for i in idx]
    assert np.allclose(boot["kendall_tau"], tau, equal_nan=True)
    assert np.allclose(boot["spearman_rho"], rho, equal_nan=True)


def test_early_vs_final_uses_the_held_out_early_fitness_when_every_mask_has_one():
    # the search's early fitness ranks the masks as their final accuracy does; the held-out one reverses the order
    rows = [row("dense", 0, 0.9, sparsity=0.0, early=0.5)]  # the dense parent needs no held-out value
    for i in range(4):
        for kind, base in (("found", 0.7), ("random", 0.6)):
            for t in (0, 1):
                rows.append(
                    row(kind, i, base + 0.01 * i, train_seed=t, early=base - 0.2 + 0.01 * i, heldout=0.5 - 0.01 * i)
                )
    out = analysis.analyse(rows)
    corr = out["sparsities"][0]["early_vs_final"]
    assert out["early_measure"] == corr["early_measure"] == "heldout"
    final = [0.7 + 0.01 * i for i in range(4)] + [0.6 + 0.01 * i for i in range(4)]
    held = [0.5 - 0.01 * i for i in range(4)] * 2
    assert corr["n"] == 8 and corr["kendall_tau"] == pytest.approx(stats.kendalltau(held, final).statistic)
    assert corr["kendall_tau"] < 0
    masks = {(m["kind"], m["index"]): m for m in corr["masks"]}  # a mask's row keeps both measures
    assert len(masks) == 8 and masks["found", 3]["early_fitness"] == pytest.approx(0.53)
    assert masks["found", 3]["early_fitness_heldout"] == pytest.approx(0.47)
    assert "(heldout early fitness)" in analysis.format_analysis(out)

    del rows[1]["early_fitness_heldout"]  # found 0 under training seed 0 only, written before it existed
    assert analysis.analyse(rows)["early_measure"] == "heldout"  # its other training seed's row has it

    # one mask without a held-out value (a result from before it existed, or a failed re-measurement): the search's
    # early fitness for every mask, never a mix of the two
    for r in rows:
        if (r["kind"], r["index"]) == ("random", 2):
            del r["early_fitness_heldout"]
    out = analysis.analyse(rows)
    corr = out["sparsities"][0]["early_vs_final"]
    assert out["early_measure"] == corr["early_measure"] == "search"
    assert corr["n"] == 8 and corr["kendall_tau"] == pytest.approx(1.0)  # the search's order is the final one
    assert corr["masks"][0]["early_fitness_heldout"] is not None  # still reported where there is one
