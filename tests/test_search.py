"""The DEAP search on a synthetic fitness (no torch): operators keep exact sparsity, Weedout / GA bookkeeping,
failures, custom operators, determinism and resume."""

import copy
import random
import subprocess
import sys
from dataclasses import replace
from itertools import pairwise

import pytest

from evo_sparse.foundations.config import SearchConfig
from evo_sparse.models.masks import Layout, Mask, MaskError, sample
from evo_sparse.search.algorithms import (
    FAILED_FITNESS,
    Hooks,
    SearchState,
    cx_unit,
    evolve,
    make_toolbox,
    mut_restart,
    mut_swap,
    repair,
)

# The units of WRN-16-2 (688 nodes) and of WRN-10-1 (224 nodes), written out so that this file needs no torch.
WRN16_2 = Layout(
    (
        "stem",
        "stage1",
        "stage1.block0.inner",
        "stage1.block1.inner",
        "stage2",
        "stage2.block0.inner",
        "stage2.block1.inner",
        "stage3",
        "stage3.block0.inner",
        "stage3.block1.inner",
    ),
    (16, 32, 32, 32, 64, 64, 64, 128, 128, 128),
)
WRN10_1 = Layout(
    ("stage1", "stage1.block0.inner", "stage2", "stage2.block0.inner", "stage3", "stage3.block0.inner"),
    (16, 16, 32, 32, 64, 64),
)
UNEVEN = Layout(("a", "b", "c", "d"), (3, 5, 8, 13))
LAYOUTS = {"wrn16-2": WRN16_2, "wrn10-1": WRN10_1, "uneven": UNEVEN}


def unit_counts(layout: Layout, genome) -> list[int]:
    return [sum(genome[a:b]) for a, b in layout.spans()]


def assert_exact(layout: Layout, genome, sparsity: float, sampling: str, *, one_per_unit: bool = True) -> None:
    """Layerwise: ``layerwise_counts`` in every unit. Global: ``global_count`` in all, and (unless told not to check
    it) at least one node per unit."""
    assert set(genome) <= {0, 1} and len(genome) == layout.size
    counts = unit_counts(layout, genome)
    if sampling == "layerwise":
        assert counts == list(layout.layerwise_counts(sparsity))
    else:
        assert sum(counts) == layout.global_count(sparsity)
        assert min(counts) >= 1 or not one_per_unit, counts


def synthetic_fitness(genome) -> dict:
    """Fraction of kept nodes in the first half, plus a small deterministic term that breaks ties."""
    half = len(genome) // 2
    front = sum(genome[:half]) / max(1, sum(genome))
    tie = (sum(i * b for i, b in enumerate(genome)) % 997) / 1e6
    return {"status": "ok", "fitness": front + tie, "seconds": 0.0}


def config(**kw) -> SearchConfig:
    base = {"population": 8, "generations": 6, "sparsity": 0.8}
    return SearchConfig(**(base | kw))


class Recorder(Hooks):
    """Hooks that keep a plain copy of every generation: genomes, fitnesses, hall-of-fame top."""

    def __init__(self):
        super().__init__(on_generation_start=self.start, on_evaluated=self.evaluated, on_generation_end=self.end)
        self.generations: list[list[tuple[list[int], float]]] = []
        self.hof_top: list[float] = []
        self.starts: list[tuple[int, int]] = []
        self.evaluated_count: dict[int, int] = {}

    def start(self, gen, nevals):
        self.starts.append((gen, nevals))

    def evaluated(self, gen, index, ind):
        assert ind.fitness.valid and ind.record is not None
        self.evaluated_count[gen] = self.evaluated_count.get(gen, 0) + 1

    def end(self, state):
        self.generations.append([(list(ind), ind.fitness.values[0]) for ind in state.population])
        self.hof_top.append(state.hall_of_fame[0].fitness.values[0] if len(state.hall_of_fame) else None)


def run(cfg: SearchConfig, layout: Layout = WRN16_2, evaluate=synthetic_fitness, hooks=None, state=None):
    tb = make_toolbox(cfg, layout, evaluate)
    return evolve(tb, cfg, state, hooks)


# --- operators keep the exact sparsity ----------------------------------------------------------------------------


@pytest.mark.parametrize("swap_prob", (0.1, 0.5, 1.0))
@pytest.mark.parametrize("sparsity", (0.0, 0.5, 0.8, 0.99))
@pytest.mark.parametrize("name", LAYOUTS)
def test_swap_mutation_keeps_per_unit_counts(name, sparsity, swap_prob):
    layout = LAYOUTS[name]
    changed = 0
    for _ in range(100):
        genome = sample(layout, sparsity)
        before = list(genome)
        (out,) = mut_swap(genome, layout, swap_prob)
        assert out is genome
        assert unit_counts(layout, genome) == unit_counts(layout, before)
        changed += genome != before
        # A swap touches at most two nodes per unit.
        changes = [sum(x != y for x, y in zip(genome[a:b], before[a:b], strict=True)) for a, b in layout.spans()]
        assert set(changes) <= {0, 2}
    if sparsity in (0.5, 0.8) and swap_prob == 1.0:
        assert changed == 100  # every unit has kept and removed nodes, so every genome changes


@pytest.mark.parametrize("sparsity", (0.3, 0.8, 0.99))
@pytest.mark.parametrize("name", LAYOUTS)
def test_unit_crossover_keeps_per_unit_counts_and_swaps_whole_units(name, sparsity):
    layout = LAYOUTS[name]
    for _ in range(100):
        a, b = sample(layout, sparsity), sample(layout, sparsity)
        pa, pb = list(a), list(b)
        ca, cb = cx_unit(a, b, layout)
        assert ca is a and cb is b
        for s, e in layout.spans():
            assert {tuple(ca[s:e]), tuple(cb[s:e])} == {tuple(pa[s:e]), tuple(pb[s:e])}
        assert_exact(layout, ca, sparsity, "layerwise")
        assert_exact(layout, cb, sparsity, "layerwise")


@pytest.mark.parametrize("sparsity", (0.3, 0.5, 0.8))
@pytest.mark.parametrize(
    ("sampling", "crossover"),
    (("layerwise", "unit"), ("layerwise", "uniform"), ("global", "uniform"), ("global", "unit")),
)
@pytest.mark.parametrize("name", LAYOUTS)
def test_toolbox_mate_keeps_exact_sparsity(name, sampling, crossover, sparsity):
    layout = LAYOUTS[name]
    cfg = config(algorithm="ga", sampling=sampling, crossover=crossover, sparsity=sparsity)
    tb = make_toolbox(cfg, layout, synthetic_fitness)
    for _ in range(200):
        a, b = tb.individual(), tb.individual()
        a, b = tb.mate(a, b)
        assert_exact(layout, a, sparsity, sampling)
        assert_exact(layout, b, sparsity, sampling)
        (m,) = tb.mutate(a)
        assert_exact(layout, m, sparsity, sampling)


@pytest.mark.parametrize(("name", "sparsity"), (("wrn16-2", 0.9), ("wrn16-2", 0.98), ("wrn10-1", 0.8), ("uneven", 0.5)))
def test_toolbox_mate_keeps_one_node_per_unit_with_global_sampling(name, sparsity):
    # E.g. WRN-16-2 at 0.9 (69 of 688 kept): about 1 child in 400 has an empty unit; at 0.98 about 1 in 11.
    layout = LAYOUTS[name]
    cfg = config(algorithm="ga", sampling="global", crossover="uniform", sparsity=sparsity)
    tb = make_toolbox(cfg, layout, synthetic_fitness)
    for _ in range(2000):
        for child in tb.mate(tb.individual(), tb.individual()):
            assert_exact(layout, child, sparsity, "global")


def corrupted(layout: Layout, density: float) -> list[int]:
    return [int(random.random() < density) for _ in range(layout.size)]


@pytest.mark.parametrize("sparsity", (0.0, 0.5, 0.8, 0.9, 0.99))
@pytest.mark.parametrize("name", LAYOUTS)
def test_repair_restores_layerwise_counts(name, sparsity):
    layout = LAYOUTS[name]
    counts = layout.layerwise_counts(sparsity)
    for density in (0.0, 0.05, 0.5, 0.95, 1.0):
        for _ in range(40):
            genome = corrupted(layout, density)
            (out,) = repair(genome, layout, counts, None)
            assert out is genome
            assert_exact(layout, genome, sparsity, "layerwise")


def test_repair_changes_only_what_it_must():
    genome = sample(WRN16_2, 0.8)
    before = list(genome)
    repair(genome, WRN16_2, WRN16_2.layerwise_counts(0.8), None)
    assert genome == before
    genome[0] = 1 - genome[0]  # one node too many or too few in the stem
    repair(genome, WRN16_2, WRN16_2.layerwise_counts(0.8), None)
    assert sum(x != y for x, y in zip(genome, before, strict=True)) in (0, 2)
    assert genome[16:] == before[16:]


@pytest.mark.parametrize("sparsity", (0.0, 0.5, 0.8, 0.9, 0.99))
@pytest.mark.parametrize("name", LAYOUTS)
def test_repair_restores_the_global_total(name, sparsity):
    layout = LAYOUTS[name]
    total = layout.global_count(sparsity)
    for density in (0.0, 0.05, 0.5, 0.95, 1.0):
        for _ in range(40):
            genome = corrupted(layout, density)
            repair(genome, layout, None, total)
            assert sum(genome) == total


@pytest.mark.parametrize("density", (0.0, 0.02, 0.1))
@pytest.mark.parametrize("name", LAYOUTS)
def test_global_repair_that_only_adds_nodes_keeps_one_per_unit(name, density):
    # When filling the empty units leaves the total at or below the target, repair only adds nodes and is sound.
    layout = LAYOUTS[name]
    tried = 0
    for sparsity in (0.5, 0.8, 0.9, 0.99):
        total = layout.global_count(sparsity)
        for _ in range(30):
            genome = corrupted(layout, density)
            if sum(genome) + sum(c == 0 for c in unit_counts(layout, genome)) <= total:
                tried += 1
                repair(genome, layout, None, total)
                assert_exact(layout, genome, sparsity, "global")
    assert tried >= 30


def test_global_repair_that_removes_nodes_keeps_one_per_unit_minimal_case():
    # Smallest failing case: units a (2 channels) and b (10), target total 6, genome all ones. repair() removes 6 of
    # the 12 kept nodes uniformly (no unit has exactly one, so none is protected) and empties unit a with probability
    # C(10,4)/C(12,6) = 23%.
    layout = Layout(("a", "b"), (2, 10))
    assert layout.global_count(0.5) == 6
    for _ in range(50):
        genome = [1] * 12
        repair(genome, layout, None, 6)
        assert sum(genome) == 6
        assert min(unit_counts(layout, genome)) >= 1, genome


@pytest.mark.parametrize("sparsity", (0.8, 0.9))
def test_global_repair_that_removes_nodes_keeps_one_per_unit(sparsity):
    # WRN-16-2 at 0.9 (total 69) from random genomes at density 0.25: about 1 repair in 5 leaves a unit empty.
    total = WRN16_2.global_count(sparsity)
    for _ in range(200):
        genome = corrupted(WRN16_2, 0.25)
        repair(genome, WRN16_2, None, total)
        assert_exact(WRN16_2, genome, sparsity, "global")


def test_ga_with_global_sampling_only_evaluates_valid_masks():
    # End to end: the GA at 0.95 with global sampling hands an invalid mask (an empty unit) to the fitness, where the
    # real Evaluator's Mask(...) raises MaskError and stops the run.
    def evaluate(genome):
        Mask(WRN16_2, tuple(genome))
        return synthetic_fitness(genome)

    run(
        config(algorithm="ga", sampling="global", sparsity=0.95, population=20, generations=15, cxpb=1.0),
        evaluate=evaluate,
    )


# --- Weedout bookkeeping --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("population", "keep"), ((8, 0), (10, 3), (5, 4), (2, 1)))
def test_weedout_bookkeeping(population, keep):
    cfg = config(population=population, keep=keep, generations=7)
    k = cfg.survivors
    rec = Recorder()
    state = run(cfg, hooks=rec)
    assert state.generation == 7
    assert state.logbook.select("gen") == list(range(7))
    assert state.logbook.select("nevals") == [population] + [population - k] * 6
    assert rec.starts == list(zip(range(7), [population] + [population - k] * 6, strict=True))
    assert [rec.evaluated_count[g] for g in range(7)] == [population] + [population - k] * 6
    assert state.logbook.select("failed") == [0] * 7
    assert all(len(g) == population for g in rec.generations)
    assert len(state.population) == population
    # Best-so-far never decreases, and it is the best fitness ever seen.
    assert rec.hof_top == sorted(rec.hof_top)
    assert rec.hof_top[-1] == max(f for g in rec.generations for _, f in g)
    assert state.logbook.select("max") == [max(f for _, f in g) for g in rec.generations]
    assert len(state.hall_of_fame) == k
    # Survivors: the first K of each generation are the previous generation's best K (same genomes and fitness).
    for prev, cur in pairwise(rec.generations):
        best = sorted(prev, key=lambda t: t[1], reverse=True)[:k]
        assert sorted(cur[:k], key=lambda t: t[1]) == sorted(best, key=lambda t: t[1])
        assert [f for _, f in cur[:k]] == sorted((f for _, f in cur[:k]), reverse=True)


@pytest.mark.parametrize("sampling", ("layerwise", "global"))
@pytest.mark.parametrize("sparsity", (0.5, 0.9, 0.99))
def test_weedout_keeps_exact_counts_in_every_generation(sampling, sparsity):
    rec = Recorder()
    run(config(sampling=sampling, sparsity=sparsity), hooks=rec)
    assert len(rec.generations) == 6
    for generation in rec.generations:
        for genome, _ in generation:
            assert_exact(WRN16_2, genome, sparsity, sampling)


def test_weedout_replacements_are_fresh_random_masks():
    # The weeded-out individuals are replaced by new draws, not by copies of survivors or of each other.
    rec = Recorder()
    cfg = config(population=10, generations=5)
    run(cfg, hooks=rec)
    for prev, cur in pairwise(rec.generations):
        seen = {tuple(g) for g, _ in prev}
        fresh = [tuple(g) for g, _ in cur[cfg.survivors :]]
        assert len(set(fresh)) == len(fresh) and not seen & set(fresh)


@pytest.mark.parametrize(
    ("sampling", "crossover"), (("layerwise", "unit"), ("layerwise", "uniform"), ("global", "uniform"))
)
def test_ga_keeps_exact_counts_and_its_best_never_drops(sampling, crossover):
    cfg = config(
        algorithm="ga",
        sampling=sampling,
        crossover=crossover,
        sparsity=0.5,
        population=12,
        generations=10,
        cxpb=0.9,
        mutpb=0.5,
        swap_prob=0.5,
    )
    rec = Recorder()
    state = run(cfg, layout=WRN10_1, hooks=rec)
    for generation in rec.generations:
        assert len(generation) == 12
        for genome, _ in generation:
            assert_exact(WRN10_1, genome, 0.5, sampling)
    best = state.logbook.select("max")
    assert best == sorted(best)  # elitism: the best K survive unchanged
    assert best[-1] > best[0]  # and the GA does improve on this easy fitness
    nevals = state.logbook.select("nevals")
    assert nevals[0] == 12 and all(0 < n <= 12 - cfg.survivors for n in nevals[1:])
    assert rec.hof_top == sorted(rec.hof_top)


def test_ga_offspring_are_clones():
    # Mutating offspring must not change the parents that survive into the same generation.
    rec = Recorder()
    run(config(algorithm="ga", population=10, generations=6, mutpb=1.0, swap_prob=1.0), layout=WRN10_1, hooks=rec)
    for prev, cur in pairwise(rec.generations):
        prev_pairs = {(tuple(g), f) for g, f in prev}
        for g, f in cur[:5]:
            assert (tuple(g), f) in prev_pairs
            assert synthetic_fitness(g)["fitness"] == f  # fitness still belongs to the genome


# --- failures -------------------------------------------------------------------------------------------------------


def flaky_fitness(genome) -> dict:
    """Fails for about a third of the genomes (deterministically), like a training that diverged."""
    record = synthetic_fitness(genome)
    if sum(i * b for i, b in enumerate(genome)) % 3 == 0:
        return record | {"status": "failed", "fitness": None, "reason": "loss became nan"}
    return record


def test_failed_records_get_failed_fitness_and_never_enter_the_hall_of_fame():
    cfg = config(population=12, generations=6)
    evaluated = []
    hooks = Hooks(on_evaluated=lambda gen, i, ind: evaluated.append((gen, ind.fitness.values[0], ind.record)))
    state = run(cfg, evaluate=flaky_fitness, hooks=hooks)
    failed = [(g, f) for g, f, r in evaluated if r["status"] == "failed"]
    assert failed, "the flaky fitness should fail sometimes"
    assert all(f == FAILED_FITNESS for _, f in failed)
    assert all(f >= 0 for g, f, r in evaluated if r["status"] == "ok")
    assert all(ind.record["status"] == "ok" for ind in state.hall_of_fame)
    assert all(ind.fitness.values[0] != FAILED_FITNESS for ind in state.hall_of_fame)
    # The logbook counts the failed individuals of each population (survivors included) and leaves them out of stats.
    failed_now = sum(ind.record["status"] == "failed" for ind in state.population)
    assert state.logbook.select("failed")[-1] == failed_now
    assert state.logbook.select("failed")[0] == sum(1 for g, _ in failed if g == 0)
    assert state.logbook.select("min")[0] >= 0


def test_record_status_ok_with_missing_fitness_counts_as_failed():
    def evaluate(genome):
        return {"status": "ok", "fitness": None}

    state = run(config(population=4, generations=1), evaluate=evaluate)
    assert all(ind.fitness.values == (FAILED_FITNESS,) for ind in state.population)
    assert state.logbook.select("failed") == [4]
    assert len(state.hall_of_fame) == 0


def test_all_failed_generation_gives_none_stats():
    def evaluate(genome):
        return {"status": "failed", "fitness": None, "reason": "out of memory"}

    state = run(config(population=6, generations=3), evaluate=evaluate)
    for entry in state.logbook:
        assert entry["failed"] == 6
        assert entry["min"] is entry["avg"] is entry["max"] is entry["std"] is None
    assert len(state.hall_of_fame) == 0
    assert state.logbook.select("nevals") == [6, 3, 3]


def test_failures_only_in_later_generations_keep_earlier_best():
    calls = {"n": 0}

    def evaluate(genome):
        calls["n"] += 1
        return synthetic_fitness(genome) if calls["n"] <= 8 else {"status": "failed", "fitness": None}

    state = run(config(population=8, generations=4), evaluate=evaluate)
    assert state.logbook.select("failed") == [0, 4, 4, 4]
    assert state.logbook.select("max") == [state.logbook.select("max")[0]] * 4
    assert len(state.hall_of_fame) == 4 and all(ind.record["status"] == "ok" for ind in state.hall_of_fame)


# --- the toolbox is open ----------------------------------------------------------------------------------------------


def test_registering_another_mutation_is_used_by_evolve():
    cfg = config(population=8, generations=4, sparsity=0.5)
    fixed = sample(WRN16_2, 0.5)
    calls = []

    def my_mutation(individual):
        calls.append(list(individual))
        individual[:] = fixed
        return (individual,)

    tb = make_toolbox(cfg, WRN16_2, synthetic_fitness)
    tb.register("mutate", my_mutation)
    rec = Recorder()
    evolve(tb, cfg, hooks=rec)
    assert len(calls) == 3 * (8 - 4)
    for generation in rec.generations[1:]:
        assert any(g == fixed for g, _ in generation[4:])  # the replacements are my operator's output


def test_registering_another_selection_is_used_by_evolve():
    cfg = config(population=8, generations=3)
    tb = make_toolbox(cfg, WRN16_2, synthetic_fitness)
    chosen = []

    def select_first(population, k):
        chosen.append(k)
        return population[:k]

    tb.register("select", select_first)
    evolve(tb, cfg)
    assert chosen == [4, 4]


def test_mut_restart_uses_the_registered_sampler():
    cfg = config(sparsity=0.9)
    tb = make_toolbox(cfg, WRN16_2, synthetic_fitness)
    ind = tb.individual()
    before = list(ind)
    (out,) = tb.mutate(ind)
    assert out is ind and list(ind) != before
    assert_exact(WRN16_2, ind, 0.9, "layerwise")
    assert mut_restart([0, 0], lambda: [1, 0]) == ([1, 0],)


# --- determinism and resume -------------------------------------------------------------------------------------------


def snapshot(state: SearchState):
    return (
        [(list(ind), ind.fitness.values, ind.record) for ind in state.population],
        list(state.logbook),
        [(list(ind), ind.fitness.values) for ind in state.hall_of_fame],
        state.generation,
    )


@pytest.mark.parametrize("algorithm", ("weedout", "ga"))
def test_same_seed_gives_identical_runs(algorithm):
    cfg = config(algorithm=algorithm, generations=5)
    random.seed(123)
    a = snapshot(run(cfg))
    random.seed(123)
    b = snapshot(run(cfg))
    random.seed(124)
    c = snapshot(run(cfg))
    assert a == b
    assert a[0] != c[0]


@pytest.mark.parametrize("split", (1, 3, 5))
@pytest.mark.parametrize("algorithm", ("weedout", "ga"))
def test_resume_equals_uninterrupted_run(algorithm, split):
    cfg = config(algorithm=algorithm, generations=6, population=10)
    random.seed(7)
    whole = snapshot(run(cfg))

    random.seed(7)
    first = run(replace(cfg, generations=split))
    assert first.generation == split and len(first.logbook) == split
    saved_rng = random.getstate()
    saved = copy.deepcopy(first)  # what a checkpoint would hold
    random.seed(999)  # the process dies; another one starts with other random state
    sample(WRN16_2, 0.5)
    random.setstate(saved_rng)
    resumed = run(cfg, state=saved)
    assert snapshot(resumed) == whole


def test_evolve_on_a_finished_state_does_nothing():
    cfg = config(generations=3)
    state = run(cfg)
    before = snapshot(state)
    assert snapshot(run(cfg, state=state)) == before


def test_search_imports_without_torch():
    code = (
        "import sys, evo_sparse.search.algorithms, evo_sparse.models.masks; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_mask_error_is_a_value_error():
    # The Evaluator turns genomes into Masks; an invalid genome surfaces as MaskError (a ValueError).
    with pytest.raises(ValueError):
        Mask(UNEVEN, (0,) * UNEVEN.size)
    assert issubclass(MaskError, ValueError)
