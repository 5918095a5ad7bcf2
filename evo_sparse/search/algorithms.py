"""The search over node masks with DEAP: operators, the toolbox for each algorithm, and the generational loop.

Weedout (Random Search): keep the best K, replace the other P-K by fresh random masks (a random-restart mutation).
GA: keep the best K (elitism), fill the other P-K with offspring of tournament-chosen parents, crossed (whole units,
or uniform then repaired) and mutated by count-preserving swaps. Both run through ``evolve``, the project's own
short loop (DEAP's maintainers advise copying the loop to add checkpoints and hooks), in DEAP's vocabulary:
``toolbox.evaluate``, ``mate``, ``mutate``, ``select`` (survivors) and ``select_parents``.

No torch here: ``toolbox.evaluate`` returns a record dict (``{"status", "fitness", ...}``, see ``fitness``).
Genomes are plain lists of 0/1, as DEAP's crossovers need.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from deap import base, creator, tools

from evo_sparse.foundations.config import SearchConfig
from evo_sparse.models.masks import Layout, sample

# Failed evaluations get this fitness: below any accuracy, so they are never kept, and still a finite number.
FAILED_FITNESS = -1.0

if not hasattr(creator, "MaskFitness"):
    creator.create("MaskFitness", base.Fitness, weights=(1.0,))
if not hasattr(creator, "MaskIndividual"):
    # ``record`` carries the evaluation's details (status, loss, seconds, ...) next to the fitness.
    # ``images``: the training length it is scored at, when an ask/tell plug-in asks for another than the run's.
    creator.create("MaskIndividual", list, fitness=creator.MaskFitness, record=None, images=None)


# --- operators: in place, return a tuple, as DEAP's own ---------------------------------------------------------


def mut_restart(individual, sampler: Callable[[], list[int]]):
    """Random restart: overwrite with a fresh random genome (Weedout's only variation)."""
    individual[:] = sampler()
    return (individual,)


def mut_swap(individual, layout: Layout, swap_prob: float):
    """In each unit, with probability ``swap_prob``, turn one kept node off and one removed node on; when that swapped
    nothing, one swap in a random unit that has both, so a mutation always changes the genome (if any unit can)."""
    spans = layout.spans()
    swapped = False
    for start, stop in spans:
        if random.random() < swap_prob:
            swapped = _swap(individual, start, stop) or swapped
    if not swapped:
        movable = [(a, b) for a, b in spans if 0 < sum(individual[a:b]) < b - a]
        if movable:
            _swap(individual, *random.choice(movable))
    return (individual,)


def _swap(individual, start: int, stop: int) -> bool:
    on = [i for i in range(start, stop) if individual[i]]
    off = [i for i in range(start, stop) if not individual[i]]
    if on and off:
        individual[random.choice(on)], individual[random.choice(off)] = 0, 1
    return bool(on and off)


def cx_unit(a, b, layout: Layout, indpb: float = 0.5):
    """Uniform crossover over whole units: each unit is swapped between the parents with probability ``indpb``.

    Per-unit kept counts are unchanged, so layerwise sparsity stays exact without repair.
    """
    for start, stop in layout.spans():
        if random.random() < indpb:
            a[start:stop], b[start:stop] = b[start:stop], a[start:stop]
    return a, b


def repair(individual, layout: Layout, counts: tuple[int, ...] | None, total: int | None):
    """Restore the exact sparsity: per-unit ``counts`` (layerwise), or ``total`` with at least one per unit."""
    spans = layout.spans()
    if counts is not None:
        for (start, stop), k in zip(spans, counts):
            _set_count(individual, list(range(start, stop)), k)
        return (individual,)
    unit_of = [u for u, (start, stop) in enumerate(spans) for _ in range(start, stop)]
    for start, stop in spans:  # no unit may be empty
        if not any(individual[start:stop]):
            individual[random.randrange(start, stop)] = 1
    kept = [sum(individual[start:stop]) for start, stop in spans]
    on = [i for i in range(layout.size) if individual[i]]
    random.shuffle(on)
    excess = len(on) - total
    for i in on:  # switch nodes off in random order, never a unit's last one
        if excess <= 0:
            break
        if kept[unit_of[i]] > 1:
            individual[i] = 0
            kept[unit_of[i]] -= 1
            excess -= 1
    if excess < 0:
        off = [i for i in range(layout.size) if not individual[i]]
        for i in random.sample(off, -excess):
            individual[i] = 1
    return (individual,)


def _set_count(individual, positions: list[int], k: int) -> None:
    on = [i for i in positions if individual[i]]
    off = [i for i in positions if not individual[i]]
    if len(on) > k:
        for i in random.sample(on, len(on) - k):
            individual[i] = 0
    elif len(on) < k:
        for i in random.sample(off, k - len(on)):
            individual[i] = 1


def _repaired(operator: Callable, fix: Callable) -> Callable:
    def wrapped(*individuals):
        out = operator(*individuals)
        for ind in out:
            fix(ind)
        return out

    return wrapped


# --- toolbox -------------------------------------------------------------------------------------------------------


def make_toolbox(
    cfg: SearchConfig,
    layout: Layout,
    evaluate: Callable[[list[int]], dict[str, Any]],
    *,
    train_images: int = 0,
    batch_size: int = 1,
) -> base.Toolbox:
    """A DEAP toolbox for ``cfg.algorithm`` (a plug-in's start from the GA's operators); register another operator
    on it to change the search. Besides DEAP's names it carries what a plug-in needs (``search.plugins``):
    ``sample``, ``repair``, ``check``, ``layout``, ``rng``, ``sparsity``, ``population_size``, ``keep``, ``budget``,
    ``train_images``, ``batch_size``, ``options`` and the variation rates ``cxpb`` and ``mutpb``."""
    tb = base.Toolbox()
    sampler = partial(sample, layout, cfg.sparsity, cfg.sampling)
    tb.register("sample", sampler)
    tb.register("individual", tools.initIterate, creator.MaskIndividual, sampler)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("evaluate", evaluate)
    tb.register("map", map)
    tb.register("select", tools.selBest)  # survivors: the best K, in both algorithms
    counts = layout.layerwise_counts(cfg.sparsity) if cfg.sampling == "layerwise" else None
    total = None if counts else layout.global_count(cfg.sparsity)
    fix = partial(repair, layout=layout, counts=counts, total=total)
    if cfg.algorithm == "weedout":
        tb.register("select_parents", _weeded_out)
        tb.register("mutate", mut_restart, sampler=sampler)
        tb.register("mate", cx_unit, layout=layout)  # unused: Weedout crosses nothing (cxpb = 0)
    else:
        tb.register("select_parents", tools.selTournament, tournsize=cfg.tournament)
        tb.register("mutate", mut_swap, layout=layout, swap_prob=cfg.swap_prob)
        if cfg.crossover == "unit" and counts is not None:
            tb.register("mate", cx_unit, layout=layout)
        else:
            tb.register("mate", _repaired(partial(tools.cxUniform, indpb=0.5), fix))
    tb.register("repair", fix)
    tb.register("check", check_genome, layout=layout, counts=counts, total=total)
    tb.layout, tb.rng, tb.options = layout, random, {}
    tb.sparsity, tb.population_size, tb.keep = cfg.sparsity, cfg.population, cfg.survivors
    tb.budget, tb.train_images, tb.batch_size = cfg.trainings, train_images, batch_size
    tb.cxpb, tb.mutpb = (0.0, 1.0) if cfg.algorithm == "weedout" else (cfg.cxpb, cfg.mutpb)
    return tb


def check_genome(genome, layout: Layout, counts: tuple[int, ...] | None, total: int | None) -> None:
    """ValueError saying what is wrong unless ``genome`` is a list of 0/1 of the layout's size at the run's sparsity
    (``counts`` per unit, or ``total`` with no unit empty)."""
    if len(genome) != layout.size:
        raise ValueError(f"a mask of {len(genome)} genes, the network has {layout.size} nodes")
    if any(g not in (0, 1) for g in genome):
        raise ValueError("a mask with genes other than 0 and 1")
    kept = [sum(genome[a:b]) for a, b in layout.spans()]
    if counts is not None and tuple(kept) != tuple(counts):
        raise ValueError(f"a mask keeping {kept} nodes per unit, the run's sparsity keeps {list(counts)} (repair it)")
    if total is not None and (sum(kept) != total or 0 in kept):
        raise ValueError(f"a mask keeping {sum(kept)} nodes, the run's sparsity keeps {total}, none empty (repair it)")


def _weeded_out(population, k):
    """The worst ``k`` of the population: the individuals Weedout replaces."""
    return tools.selWorst(population, k)


# --- the loop ------------------------------------------------------------------------------------------------------


@dataclass
class SearchState:
    """Everything the loop carries between generations (what a checkpoint saves)."""

    generation: int = 0  # the next generation to run
    finished: bool = False  # the budget is spent: no generation follows, whatever --generations says
    population: list = field(default_factory=list)
    hall_of_fame: tools.HallOfFame | None = None
    logbook: tools.Logbook = field(default_factory=tools.Logbook)


@dataclass
class Hooks:
    """Called by the loops: before a generation's evaluations, after each evaluation, after each generation; and
    asked how much of the budget is left."""

    on_generation_start: Callable[[int, int], None] = lambda gen, nevals: None
    on_evaluated: Callable[[int, int, Any], None] = lambda gen, index, individual: None
    on_generation_end: Callable[[SearchState], None] = lambda state: None
    budget_left: Callable[[], float | None] = lambda: None  # trainings left (None: no budget)


def statistics() -> tools.Statistics:
    """min / avg / max / std of fitness over the individuals whose evaluation succeeded (None if none did)."""
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    for name, fn in (("min", np.min), ("avg", np.mean), ("max", np.max), ("std", np.std)):
        stats.register(name, lambda xs, fn=fn: float(fn(xs)) if len(xs) else None)
    return stats


def next_generation(population: list, toolbox: base.Toolbox, keep: int, cxpb: float, mutpb: float) -> list:
    """Survivors (``toolbox.select``) plus P-K offspring of ``toolbox.select_parents``, varied like ``varAnd``.

    Offspring are clones; an offspring's fitness is invalidated (so that it is evaluated) only when its genome changed:
    a clone left as its parent was, or crossed with an identical mate, keeps the parent's fitness.
    """
    survivors = toolbox.select(population, keep)
    offspring = [toolbox.clone(ind) for ind in toolbox.select_parents(population, len(population) - keep)]
    before = [list(ind) for ind in offspring]
    for i in range(1, len(offspring), 2):
        if random.random() < cxpb:
            offspring[i - 1], offspring[i] = toolbox.mate(offspring[i - 1], offspring[i])
    for i, ind in enumerate(offspring):
        if random.random() < mutpb:
            (offspring[i],) = toolbox.mutate(ind)
    for ind, genome in zip(offspring, before, strict=True):
        if list(ind) != genome:
            del ind.fitness.values
            ind.record = None
    return survivors + offspring


def assign(individual, record: dict[str, Any]) -> None:
    """Give an individual its evaluation: the accuracy as fitness, or ``FAILED_FITNESS`` when it failed."""
    individual.record = record
    individual.fitness.values = (float(record["fitness"]) if succeeded(individual) else FAILED_FITNESS,)


def succeeded(individual) -> bool:
    """True when the individual's evaluation gave an accuracy (the test ``assign`` uses)."""
    record = individual.record
    return record is not None and record.get("status") == "ok" and record.get("fitness") is not None


def evolve(
    toolbox: base.Toolbox, cfg: SearchConfig, state: SearchState | None = None, hooks: Hooks | None = None
) -> SearchState:
    """Run generations ``state.generation .. cfg.generations-1`` and return the final state.

    Generation 0 evaluates a random population; every later one keeps K survivors and evaluates the P-K offspring
    whose genome changed. ``toolbox.map`` yields None for an individual the budget leaves unevaluated: the generation
    then ends with the evaluated ones and the run is finished, as it is once ``hooks.budget_left()`` reaches 0.
    ``hooks.on_generation_end`` runs after the logbook and hall of fame are updated (the place to checkpoint). A run
    resumed from a saved state continues exactly where it stopped.
    """
    state = state or SearchState()
    hooks = hooks or Hooks()
    if state.hall_of_fame is None:
        state.hall_of_fame = tools.HallOfFame(cfg.survivors)
    stats = statistics()
    while state.generation < cfg.generations and not state.finished:
        gen = state.generation
        if gen == 0:
            population = toolbox.population(n=cfg.population)
        else:
            population = next_generation(state.population, toolbox, cfg.survivors, toolbox.cxpb, toolbox.mutpb)
        invalid = [ind for ind in population if not ind.fitness.valid]
        for ind in invalid:
            toolbox.check(ind)
        hooks.on_generation_start(gen, len(invalid))
        evaluated, cut = evaluate_all(toolbox, invalid, gen, hooks)
        if cut:
            population = [ind for ind in population if ind.fitness.valid]
        record_generation(state, gen, population, len(evaluated), stats)
        left = hooks.budget_left()
        state.finished = cut or (left is not None and left <= 0)
        hooks.on_generation_end(state)
    return state


def evaluate_all(toolbox: base.Toolbox, individuals: list, gen: int, hooks: Hooks) -> tuple[list, bool]:
    """Evaluate ``individuals`` with ``toolbox.map`` in order, ``hooks.on_evaluated`` after each; (the evaluated
    ones, whether the budget left some unevaluated: the map yields None for those)."""
    evaluated, cut = [], False
    for ind, record in zip(individuals, toolbox.map(toolbox.evaluate, individuals), strict=True):
        if record is None:
            cut = True
            continue
        assign(ind, record)
        hooks.on_evaluated(gen, len(evaluated), ind)
        evaluated.append(ind)
    return evaluated, cut


def record_generation(state: SearchState, gen: int, population: list, nevals: int, stats: tools.Statistics) -> None:
    """Close generation ``gen``: the hall of fame and logbook updated with ``population`` (``nevals`` new evaluations;
    only individuals scored at the run's own training length count), the state moved on."""
    scored = [ind for ind in population if succeeded(ind) and getattr(ind, "images", None) is None]
    state.hall_of_fame.update(scored)
    failed = sum(not succeeded(ind) for ind in population)
    state.logbook.record(gen=gen, nevals=nevals, failed=failed, **stats.compile(scored))
    state.population = population
    state.generation = gen + 1
