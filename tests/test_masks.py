"""Masks: exact-count sampling, the validated Mask value, its text form, and the i.i.d. property of the sampler."""

import math
import random
from collections import Counter
from fractions import Fraction
from functools import partial
from itertools import combinations, pairwise

import pytest
from scipy.stats import chisquare

from evo_sparse.models import wrn
from evo_sparse.models.masks import (
    ENCODING_PREFIX,
    Layout,
    Mask,
    MaskError,
    _count_weights,
    _global_unit_counts,
    sample,
)
from evo_sparse.search.algorithms import mut_restart

SPARSITIES = (0.0, 0.3, 0.5, 0.8, 0.9, 0.99)
ARCHS = ((10, 1), (16, 2), (16, 8))


def layout_of(depth: int, width: int) -> Layout:
    return Layout.from_units(wrn.units(depth, width))


def unit_counts(layout: Layout, bits) -> list[int]:
    return [sum(bits[a:b]) for a, b in layout.spans()]


@pytest.fixture(params=ARCHS, ids=lambda a: f"wrn{a[0]}-{a[1]}")
def layout(request) -> Layout:
    return layout_of(*request.param)


# --- layout arithmetic -----------------------------------------------------------------------------------------------


def test_layout_spans_tile_the_genome():
    lay = layout_of(16, 2)
    spans = lay.spans()
    assert spans[0][0] == 0 and spans[-1][1] == lay.size == 688
    assert all(b == c for (_, b), (c, _) in pairwise(spans))
    assert [b - a for a, b in spans] == list(lay.sizes)


def test_layerwise_counts_round_half_up_and_keep_one():
    lay = layout_of(16, 2)  # sizes 16, 32 x3, 64 x3, 128 x3
    # The cpu preset's comment: WRN-16-2 at 80% compacts to widths 3/6/13/26.
    assert lay.layerwise_counts(0.8) == (3, 6, 6, 6, 13, 13, 13, 26, 26, 26)
    assert lay.layerwise_counts(0.0) == lay.sizes
    assert lay.layerwise_counts(0.99) == (1, 1, 1, 1, 1, 1, 1, 1, 1, 1)  # 0.16 .. 1.28 -> at least one
    assert Layout(("a",), (2,)).layerwise_counts(0.75) == (1,)  # 0.5 rounds up


def test_global_count_at_least_one_per_unit():
    lay = layout_of(16, 2)
    assert lay.global_count(0.0) == lay.size
    assert lay.global_count(0.9) == 69  # round(68.8)
    assert lay.global_count(0.99) == len(lay.sizes)  # round(6.88) = 7 < 10 units


# --- sampling at exact sparsity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layerwise_sampling_keeps_exact_counts_per_unit(layout, sparsity):
    expected = list(layout.layerwise_counts(sparsity))
    for _ in range(5):
        bits = sample(layout, sparsity, "layerwise")
        assert len(bits) == layout.size
        assert set(bits) <= {0, 1}
        assert unit_counts(layout, bits) == expected
        Mask(layout, tuple(bits))  # valid


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_sampling_keeps_exact_total_and_one_per_unit(layout, sparsity):
    for _ in range(20):
        bits = sample(layout, sparsity, "global")
        assert sum(bits) == layout.global_count(sparsity)
        assert min(unit_counts(layout, bits)) >= 1
        assert Mask(layout, tuple(bits)).sparsity == pytest.approx(1 - layout.global_count(sparsity) / layout.size)


def test_global_sampling_keeps_every_unit_at_high_sparsity():
    # At 0.99 on WRN-16-8, 27 of 2,704 nodes are kept: a draw over all nodes would almost always miss the stem.
    lay = layout_of(16, 8)
    for _ in range(50):
        counts = unit_counts(lay, sample(lay, 0.99, "global"))
        assert sum(counts) == 27 and min(counts) >= 1


# --- global sampling is uniform over valid masks ----------------------------------------------------------------

SMALL = Layout(("a", "b", "c"), (2, 3, 4))


def valid_masks(layout: Layout, total: int) -> list[tuple[int, ...]]:
    """Every mask of ``layout`` with ``total`` kept nodes and at least one per unit, by brute force."""
    out = []
    for kept in combinations(range(layout.size), total):
        bits = tuple(int(i in kept) for i in range(layout.size))
        if min(unit_counts(layout, bits)) >= 1:
            out.append(bits)
    return out


def walk_probability(sizes: tuple[int, ...], total: int, counts) -> Fraction:
    """The sampler's exact probability of drawing these unit counts: the product of its per-unit walk weights."""
    p, r = Fraction(1), total
    for i, k in enumerate(counts):
        weights = dict(_count_weights(sizes, total, i, r))
        p *= Fraction(weights.get(k, 0), sum(weights.values()))
        r -= k
    return p


def test_global_sampling_is_uniform_over_valid_masks():
    sparsity = 0.45  # keeps round(0.55 * 9) = 5 of 9 nodes: 98 valid masks
    total = SMALL.global_count(sparsity)
    valid = valid_masks(SMALL, total)
    assert total == 5 and len(valid) == 98
    rng = random.Random(0)
    drawn = Counter(tuple(sample(SMALL, sparsity, "global", rng)) for _ in range(20_000))
    assert set(drawn) == set(valid)  # only valid masks, and every one of them
    assert chisquare([drawn[m] for m in valid]).pvalue > 0.001


@pytest.mark.parametrize("total", range(3, 10))
def test_global_unit_count_probabilities_are_exact(total):
    # P(counts) = prod comb(C_i, k_i) / N(0, K) = (valid masks with these counts) / (valid masks), as exact fractions.
    valid = valid_masks(SMALL, total)
    assert sum(dict(_count_weights(SMALL.sizes, total, 0, total)).values()) == len(valid)  # N(0, K)
    by_counts = Counter(tuple(unit_counts(SMALL, m)) for m in valid)
    for counts, n in by_counts.items():
        assert n == math.prod(math.comb(c, k) for c, k in zip(SMALL.sizes, counts))
        assert walk_probability(SMALL.sizes, total, counts) == Fraction(n, len(valid))


def keeps_one_probability(sizes: tuple[int, ...], total: int, unit: int) -> Fraction:
    """P(``unit`` keeps exactly one node) over valid masks, from polynomials prod ((1+x)^C - 1): no sampler code."""

    def valid_counts(cs) -> list[int]:  # coefficient r: ways to keep r nodes in units cs with each keeping >= 1
        poly = [1]
        for c in cs:
            factor = [math.comb(c, k) for k in range(c + 1)]
            factor[0] = 0
            poly = [sum(p * factor[r - j] for j, p in enumerate(poly) if 0 <= r - j <= c) for r in range(len(poly) + c)]
        return poly

    others = sizes[:unit] + sizes[unit + 1 :]
    return Fraction(sizes[unit] * valid_counts(others)[total - 1], valid_counts(sizes)[total])


def test_global_sampling_matches_the_exact_keep_one_share_on_wrn10_1():
    # The biased repair kept exactly one channel of a 16-channel unit in 0.527 of draws; uniform sampling gives ~0.425.
    lay, sparsity, draws = layout_of(10, 1), 0.9, 20_000
    total = lay.global_count(sparsity)
    assert total == 22 and lay.sizes[:2] == (16, 16)
    p = keeps_one_probability(lay.sizes, total, 0)
    assert keeps_one_probability(lay.sizes, total, 1) == p  # the two 16-channel units are exchangeable
    first = dict(_count_weights(lay.sizes, total, 0, total))
    assert Fraction(first[1], sum(first.values())) == p  # the sampler's own weight for "unit 0 keeps one"
    assert abs(p - Fraction(4255, 10_000)) < Fraction(1, 10_000)
    rng = random.Random(0)
    genomes = [sample(lay, sparsity, "global", rng) for _ in range(draws)]
    for unit in (0, 1):
        a, b = lay.spans()[unit]
        share = sum(sum(g[a:b]) == 1 for g in genomes) / draws
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / draws), (unit, share, float(p))


def test_global_sampling_is_reproducible_from_a_seed():
    lay = layout_of(16, 2)
    for sparsity in (0.5, 0.9):
        assert sample(lay, sparsity, "global", random.Random(11)) == sample(lay, sparsity, "global", random.Random(11))
        assert sample(lay, sparsity, "global", random.Random(11)) != sample(lay, sparsity, "global", random.Random(12))
    random.seed(5)
    a = sample(lay, 0.9, "global")
    random.seed(5)
    assert sample(lay, 0.9, "global") == a  # default: the module-level generator


@pytest.mark.parametrize("total", (1, 10))
def test_global_unit_counts_refuse_a_total_no_valid_mask_has(total):
    with pytest.raises(MaskError, match="no mask keeps"):
        _global_unit_counts(SMALL.sizes, total, random.Random(0))


def test_sampling_uses_the_given_rng_and_rejects_unknown_mode():
    lay = layout_of(10, 1)
    assert sample(lay, 0.5, rng=random.Random(7)) == sample(lay, 0.5, rng=random.Random(7))
    assert sample(lay, 0.5, rng=random.Random(7)) != sample(lay, 0.5, rng=random.Random(8))
    random.seed(3)
    a = sample(lay, 0.5)
    random.seed(3)
    assert sample(lay, 0.5) == a  # default: the module-level generator (the one DEAP uses)
    with pytest.raises(MaskError, match="unknown sampling mode"):
        sample(lay, 0.5, "blockwise")


# --- the i.i.d. property ------------------------------------------------------------------------------------------


DRAWS = 2000


def _check_keep_frequencies(layout: Layout, sparsity: float, genomes: list[list[int]]) -> None:
    """Every node is kept with probability k/C of its unit, within 5 binomial sigma."""
    n = len(genomes)
    freq = [sum(col) / n for col in zip(*genomes, strict=True)]
    for (a, b), k, c in zip(layout.spans(), layout.layerwise_counts(sparsity), layout.sizes, strict=True):
        p = k / c
        assert abs(p - (1 - sparsity)) <= 0.5 / c + 1e-12  # k/C is (1-s) up to rounding
        sigma = math.sqrt(p * (1 - p) / n)
        worst = max(abs(f - p) for f in freq[a:b])
        assert worst <= 5 * sigma + 1e-12, (a, b, worst, sigma)


def _check_overlap_is_independent(layout: Layout, sparsity: float, genomes: list[list[int]]) -> None:
    """Nodes kept by both of two successive draws: hypergeometric mean k^2/C per unit if the draws are independent."""
    mean = var = 0.0
    for k, c in zip(layout.layerwise_counts(sparsity), layout.sizes, strict=True):
        mean += k * k / c
        var += k * (k / c) * ((c - k) / c) * ((c - k) / (c - 1)) if c > 1 else 0.0
    pairs = list(pairwise(genomes))
    overlap = sum(sum(x & y for x, y in zip(g, h, strict=True)) for g, h in pairs) / len(pairs)
    assert abs(overlap - mean) <= 5 * math.sqrt(var / len(pairs)), (overlap, mean)


@pytest.mark.parametrize("sparsity", (0.5, 0.8))
def test_sampler_keeps_every_node_with_equal_probability(sparsity):
    lay = layout_of(10, 1)
    genomes = [sample(lay, sparsity) for _ in range(DRAWS)]
    _check_keep_frequencies(lay, sparsity, genomes)
    _check_overlap_is_independent(lay, sparsity, genomes)


@pytest.mark.parametrize("sparsity", (0.5, 0.8))
def test_random_restart_draws_independently_of_the_previous_genome(sparsity):
    lay = layout_of(10, 1)
    sampler = partial(sample, lay, sparsity, "layerwise")
    individual = [1] * lay.size  # the dense start must leave no trace
    genomes = []
    for _ in range(DRAWS):
        (out,) = mut_restart(individual, sampler)
        assert out is individual  # in place, as DEAP's operators
        genomes.append(list(individual))
    assert all(unit_counts(lay, g) == list(lay.layerwise_counts(sparsity)) for g in genomes)
    _check_keep_frequencies(lay, sparsity, genomes)
    _check_overlap_is_independent(lay, sparsity, genomes)


def test_overlap_check_detects_dependent_draws():
    # The independence check above is not vacuous: a "mutation" that swaps one node keeps far more overlap.
    lay = layout_of(10, 1)
    g = sample(lay, 0.5)
    genomes = []
    for _ in range(200):
        a, b = lay.spans()[0]
        on = [i for i in range(a, b) if g[i]]
        off = [i for i in range(a, b) if not g[i]]
        g[random.choice(on)], g[random.choice(off)] = 0, 1
        genomes.append(list(g))
    with pytest.raises(AssertionError):
        _check_overlap_is_independent(lay, 0.5, genomes)


# --- Mask: a validated value ------------------------------------------------------------------------------------


def test_mask_rejects_wrong_length():
    lay = layout_of(10, 1)
    bits = sample(lay, 0.5)
    with pytest.raises(MaskError, match="224"):
        Mask(lay, tuple(bits[:-1]))
    with pytest.raises(MaskError):
        Mask(lay, tuple(bits + [1]))


@pytest.mark.parametrize("bad", (2, -1))
def test_mask_rejects_values_other_than_0_1(bad):
    lay = layout_of(10, 1)
    bits = sample(lay, 0.5)
    bits[5] = bad
    with pytest.raises(MaskError, match="0 or 1"):
        Mask(lay, tuple(bits))


@pytest.mark.parametrize("bad", (0.5, 1.7))
def test_mask_rejects_fractional_values(bad):
    lay = layout_of(10, 1)
    bits = sample(lay, 0.5)
    bits[5] = bad
    with pytest.raises(MaskError):
        Mask(lay, tuple(bits))


def test_mask_rejects_an_empty_unit_and_names_it():
    lay = layout_of(16, 2)
    bits = sample(lay, 0.5)
    a, b = lay.spans()[4]
    bits[a:b] = [0] * (b - a)
    with pytest.raises(MaskError, match="'stage2'"):
        Mask(lay, tuple(bits))


def test_mask_normalises_bits_to_an_int_tuple():
    lay = layout_of(10, 1)
    bits = [bool(b) for b in sample(lay, 0.5)]
    m = Mask(lay, bits)
    assert isinstance(m.bits, tuple) and all(type(b) is int for b in m.bits)
    assert m == Mask(lay, tuple(int(b) for b in bits)) and hash(m) == hash(Mask(lay, tuple(map(int, bits))))


def test_from_units_builds_the_same_mask_as_bits():
    lay = Layout(("a", "b", "c"), (3, 4, 2))
    m = Mask.from_units(lay, {"a": [0, 2], "b": [3], "c": [0, 1]})
    assert m.bits == (1, 0, 1, 0, 0, 0, 1, 1, 1)
    assert m.kept() == {"a": [0, 2], "b": [3], "c": [0, 1]}
    assert m.widths() == {"a": 2, "b": 1, "c": 2}
    assert m.sparsity == pytest.approx(4 / 9)


def test_from_units_rejects_unknown_or_missing_units():
    lay = Layout(("a", "b"), (3, 4))
    with pytest.raises(MaskError, match="exactly the units"):
        Mask.from_units(lay, {"a": [0], "b": [1], "z": [0]})
    with pytest.raises(MaskError, match="exactly the units"):
        Mask.from_units(lay, {"a": [0]})


@pytest.mark.parametrize("index", (-1, 4, 100))
def test_from_units_rejects_out_of_range_indices(index):
    lay = Layout(("a", "b"), (3, 4))
    with pytest.raises(MaskError, match=f"channel {index} out of range for unit 'b'"):
        Mask.from_units(lay, {"a": [0], "b": [index]})


def test_from_units_rejects_an_empty_unit():
    lay = Layout(("a", "b"), (3, 4))
    with pytest.raises(MaskError, match="'a'"):
        Mask.from_units(lay, {"a": [], "b": [1]})


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_kept_widths_and_sparsity_agree_with_the_bits(layout, sparsity):
    m = Mask(layout, tuple(sample(layout, sparsity)))
    kept = m.kept()
    assert list(kept) == list(layout.names)
    assert {n: len(v) for n, v in kept.items()} == m.widths()
    assert list(m.widths().values()) == list(layout.layerwise_counts(sparsity))
    assert Mask.from_units(layout, kept) == m
    assert m.sparsity == pytest.approx(1 - sum(layout.layerwise_counts(sparsity)) / layout.size)
    if sparsity == 0.0:
        assert m.sparsity == 0.0


# --- text form ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ("layerwise", "global"))
def test_encode_decode_round_trip(layout, mode):
    for sparsity in SPARSITIES:
        m = Mask(layout, tuple(sample(layout, sparsity, mode)))
        text = m.encode()
        assert text.startswith(ENCODING_PREFIX)
        assert text.isascii() and "=" not in text
        assert Mask.decode(layout, text) == m


def test_encode_is_msb_first_and_compact():
    lay = Layout(("a", "b"), (8, 8))
    m = Mask(lay, (1, 0, 0, 0, 0, 0, 0, 0) + (0, 0, 0, 0, 0, 0, 0, 1))
    assert m.encode() == f"{ENCODING_PREFIX}{lay.fingerprint()}:gAE"  # bytes 0x80 0x01
    big = Mask(layout_of(16, 8), tuple(sample(layout_of(16, 8), 0.5)))
    assert len(big.encode()) == len(ENCODING_PREFIX) + 7 + math.ceil(2704 / 8 * 4 / 3)


def test_decode_rejects_another_layouts_string():
    small, big = layout_of(10, 1), layout_of(16, 2)
    text = Mask(small, tuple(sample(small, 0.5))).encode()
    with pytest.raises(MaskError, match="another network"):
        Mask.decode(big, text)
    with pytest.raises(MaskError, match="another network"):
        Mask.decode(small, Mask(big, tuple(sample(big, 0.5))).encode())


def test_decode_rejects_another_layout_of_the_same_size():
    a, b = layout_of(22, 2), layout_of(10, 4)
    assert a.size == b.size == 912 and a != b
    with pytest.raises(MaskError):
        Mask.decode(b, Mask(a, tuple(sample(a, 0.5))).encode())


@pytest.mark.parametrize("text", ("m1:", "m1:!!!!", "m1:a", "m1:abc", "m1:" + "A" * 37 + "@"))
def test_decode_rejects_garbage(text):
    with pytest.raises(MaskError):
        Mask.decode(layout_of(10, 1), text)


def test_decode_rejects_missing_prefix_and_non_strings():
    lay = layout_of(10, 1)
    text = Mask(lay, tuple(sample(lay, 0.5))).encode()
    for bad in (text[len(ENCODING_PREFIX) :], "m2:" + text[3:], text.encode(), None, 123):
        with pytest.raises(MaskError, match="start with"):
            Mask.decode(lay, bad)


def test_decode_rejects_an_all_zero_mask():
    lay = layout_of(10, 1)
    zeros = f"{ENCODING_PREFIX}{lay.fingerprint()}:" + "A" * math.ceil(lay.size / 8 * 4 / 3)
    with pytest.raises(MaskError, match="keep at least one"):
        Mask.decode(lay, zeros)
