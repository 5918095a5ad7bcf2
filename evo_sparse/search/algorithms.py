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
    creator.create("MaskIndividual", list, fitness=creator.MaskFitness, record=None)


# --- operators: in place, return a tuple, as DEAP's own ---------------------------------------------------------


def mut_restart(individual, sampler: Callable[[], list[int]]):
    """Random restart: overwrite with a fresh random genome (Weedout's only variation)."""
    individual[:] = sampler()
    return (individual,)


def mut_swap(individual, layout: Layout, swap_prob: float):
    """In each unit, with probability ``swap_prob``, turn one kept node off and one removed node on."""
    for start, stop in layout.spans():
        if random.random() < swap_prob:
            on = [i for i in range(start, stop) if individual[i]]
            off = [i for i in range(start, stop) if not individual[i]]
            if on and off:
                individual[random.choice(on)], individual[random.choice(off)] = 0, 1
    return (individual,)


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


def make_toolbox(cfg: SearchConfig, layout: Layout, evaluate: Callable[[list[int]], dict[str, Any]]) -> base.Toolbox:
    """A DEAP toolbox for ``cfg.algorithm``; register another operator on it to change the search."""
    tb = base.Toolbox()
    sampler = partial(sample, layout, cfg.sparsity, cfg.sampling)
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
    return tb


def _weeded_out(population, k):
    """The worst ``k`` of the population: the individuals Weedout replaces."""
    return tools.selWorst(population, k)


def variation_rates(cfg: SearchConfig) -> tuple[float, float]:
    """(cxpb, mutpb): Weedout restarts every replaced individual and crosses none."""
    return (0.0, 1.0) if cfg.algorithm == "weedout" else (cfg.cxpb, cfg.mutpb)


# --- the loop ------------------------------------------------------------------------------------------------------


@dataclass
class SearchState:
    """Everything the loop carries between generations (what a checkpoint saves)."""

    generation: int = 0  # the next generation to run
    population: list = field(default_factory=list)
    hall_of_fame: tools.HallOfFame | None = None
    logbook: tools.Logbook = field(default_factory=tools.Logbook)


@dataclass
class Hooks:
    """Called by ``evolve``: before a generation's evaluations, after each evaluation, after each generation."""

    on_generation_start: Callable[[int, int], None] = lambda gen, nevals: None
    on_evaluated: Callable[[int, int, Any], None] = lambda gen, index, individual: None
    on_generation_end: Callable[[SearchState], None] = lambda state: None


def statistics() -> tools.Statistics:
    """min / avg / max / std of fitness over the individuals whose evaluation succeeded (None if none did)."""
    stats = tools.Statistics(lambda ind: ind.fitness.values[0])
    for name, fn in (("min", np.min), ("avg", np.mean), ("max", np.max), ("std", np.std)):
        stats.register(name, lambda xs, fn=fn: float(fn(xs)) if len(xs) else None)
    return stats


def next_generation(population: list, toolbox: base.Toolbox, keep: int, cxpb: float, mutpb: float) -> list:
    """Survivors (``toolbox.select``) plus P-K offspring of ``toolbox.select_parents``, varied like ``varAnd``.

    Offspring are clones; the fitness of every changed offspring is invalidated so that it is evaluated again.
    """
    survivors = toolbox.select(population, keep)
    offspring = [toolbox.clone(ind) for ind in toolbox.select_parents(population, len(population) - keep)]
    for i in range(1, len(offspring), 2):
        if random.random() < cxpb:
            offspring[i - 1], offspring[i] = toolbox.mate(offspring[i - 1], offspring[i])
            del offspring[i - 1].fitness.values, offspring[i].fitness.values
    for i, ind in enumerate(offspring):
        if random.random() < mutpb:
            (offspring[i],) = toolbox.mutate(ind)
            del offspring[i].fitness.values
    for ind in offspring:
        if not ind.fitness.valid:
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

    Generation 0 evaluates a random population; every later one keeps K survivors and evaluates the P-K new or
    changed individuals. ``hooks.on_generation_end`` runs after the logbook and hall of fame are updated (the place to
    checkpoint). A run resumed from a saved state continues exactly where it stopped.
    """
    state = state or SearchState()
    hooks = hooks or Hooks()
    if state.hall_of_fame is None:
        state.hall_of_fame = tools.HallOfFame(cfg.survivors)
    stats = statistics()
    cxpb, mutpb = variation_rates(cfg)
    while state.generation < cfg.generations:
        gen = state.generation
        if gen == 0:
            population = toolbox.population(n=cfg.population)
        else:
            population = next_generation(state.population, toolbox, cfg.survivors, cxpb, mutpb)
        invalid = [ind for ind in population if not ind.fitness.valid]
        hooks.on_generation_start(gen, len(invalid))
        for index, (ind, record) in enumerate(zip(invalid, toolbox.map(toolbox.evaluate, invalid), strict=True)):
            assign(ind, record)
            hooks.on_evaluated(gen, index, ind)
        state.hall_of_fame.update([ind for ind in population if succeeded(ind)])
        failed = sum(not succeeded(ind) for ind in population)
        state.logbook.record(
            gen=gen, nevals=len(invalid), failed=failed, **stats.compile([ind for ind in population if succeeded(ind)])
        )
        state.population = population
        state.generation = gen + 1
        hooks.on_generation_end(state)
    return state
