"""The curve a search must beat: pure Random Search, drawn from the fitness values a search saw in generation 0.

Generation 0 of a run is a sample of masks drawn at random, so its fitness values estimate the distribution F of the
fitness of one random mask. Random Search with a budget of n trainings keeps the best of n i.i.d. draws from F, whose
expectation is E[max_n] = ∫ v d(F(v)^n). With F the empirical distribution of the m values (sorted v_(1) <= ... <=
v_(m)) this is exact and cheap: E[max_n] = Σ_i v_(i) · ((i/m)^n - ((i-1)/m)^n); ties need no care, their terms
telescope. It is the plug-in (bootstrap) estimate: it never passes the sample's best value, so for n near m and beyond
it flattens at max(values) and understates what true Random Search would reach; read it for n well below m.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def _sorted(values: Iterable[float | None]) -> np.ndarray:
    """The finite values, ascending; failed evaluations (None, NaN) are dropped."""
    v = np.array([x for x in values if x is not None], float)
    return np.sort(v[np.isfinite(v)])


def _weights(m: int, n_max: int) -> np.ndarray:
    """[n_max, m]: row n-1 holds P(the best of n draws is the i-th smallest value) = (i/m)^n - ((i-1)/m)^n."""
    cdf = np.arange(m + 1) / m
    powers = cdf[None, :] ** np.arange(1, n_max + 1)[:, None]
    return np.diff(powers, axis=1)


def expected_best_of_n(values: Iterable[float | None], n_max: int) -> list[float]:
    """For n = 1 .. ``n_max``: the expected maximum of n draws with replacement from the empirical distribution of
    ``values`` (element n-1 is for n draws); [] when no value is left after dropping None and NaN, or ``n_max`` < 1."""
    v = _sorted(values)
    if not len(v) or n_max < 1:
        return []
    return [float(x) for x in _weights(len(v), n_max) @ v]


def best_of_n_sd(values: Iterable[float | None], n_max: int) -> list[float]:
    """For n = 1 .. ``n_max``: the standard deviation of the best of n such draws (the spread of one Random Search
    run's best; the mean of k runs has this / sqrt(k)); [] as ``expected_best_of_n``."""
    v = _sorted(values)
    if not len(v) or n_max < 1:
        return []
    w = _weights(len(v), n_max)
    mean, second = w @ v, w @ (v * v)
    return [math.sqrt(max(0.0, float(s - m * m))) for m, s in zip(mean, second)]
