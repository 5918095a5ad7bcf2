"""The Random Search reference: the expected best of n i.i.d. draws from generation 0's fitness values, checked by
hand, by exact enumeration of every sequence of draws and by simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from evo_sparse.stats.reference import best_of_n_sd, expected_best_of_n


def enumerated(values: list[float], n: int) -> tuple[float, float]:
    """(mean, sd) of the best of n draws over all len(values)^n equally likely sequences of draws."""
    best = np.array([max(seq) for seq in itertools.product(values, repeat=n)], float)
    return float(best.mean()), float(best.std())


def test_hand_computed_cases():
    assert expected_best_of_n([0, 1], 2) == pytest.approx([0.5, 0.75])  # P(max = 1) = 1 - 1/4
    assert expected_best_of_n([0.3], 4) == pytest.approx([0.3] * 4)  # one value: always it
    assert expected_best_of_n([1, 2, 3], 2) == pytest.approx([2.0, (1 * 1 + 2 * 3 + 3 * 5) / 9])
    assert best_of_n_sd([0, 1], 2) == pytest.approx([0.5, np.sqrt(0.75 * 0.25)])


@pytest.mark.parametrize("values", [[0.1, 0.4, 0.2], [0.5, 0.5, 0.7, 0.5], [0.2, 0.2, 0.9, 0.9, 0.3], [1.0, 1.0]])
def test_equals_exact_enumeration_with_and_without_ties(values):
    expected, sd = expected_best_of_n(values, 4), best_of_n_sd(values, 4)
    for n in range(1, 5):
        mean, spread = enumerated(values, n)
        assert expected[n - 1] == pytest.approx(mean) and sd[n - 1] == pytest.approx(spread, abs=1e-12)


def test_agrees_with_a_simulation_of_random_search():
    rng = np.random.default_rng(0)
    values = np.round(rng.beta(5, 3, size=40), 3).tolist()  # a 1/1000 grid: ties, as accuracies have
    draws = rng.choice(values, size=(100_000, 30))
    simulated = np.maximum.accumulate(draws, axis=1).mean(0)
    assert np.allclose(expected_best_of_n(values, 30), simulated, atol=2e-3)


def test_failed_values_are_dropped_and_the_curve_rises_to_the_best():
    curve = expected_best_of_n([0.2, None, 0.6, float("nan"), 0.4], 200)
    assert curve[0] == pytest.approx(0.4) and all(np.diff(curve) >= 0)
    assert curve[-1] == pytest.approx(0.6) and max(curve) <= 0.6
    assert expected_best_of_n([None], 3) == [] and expected_best_of_n([], 3) == [] and expected_best_of_n([1], 0) == []
    assert best_of_n_sd([None, None], 2) == []
