"""A (1+λ) local search over node masks: a toolbox plug-in for evo-sparse (copy it and make it yours).

Every generation the best mask so far (the incumbent) gets λ = P - K children, each the incumbent after ``swaps``
count-preserving swaps (one kept node of a unit turned off, one removed node of that unit turned on), so every child
keeps the run's exact sparsity. The K best of parents and children survive (DEAP's ``selBest``, the toolbox's
default ``select``): with ``--keep 1`` it is exactly (1+λ), with more it keeps runners-up as a fallback. A child equal
to a mask scored before costs nothing: the run's fitness cache answers it.

    evo-sparse run --preset smoke --algorithm examples.local_search:search --keep 1 --algo-opt swaps=2
    evo-sparse compare --preset smoke --algorithms weedout,examples.local_search:search --runs 3
"""

from __future__ import annotations

from deap import tools


def search(toolbox) -> None:
    """(1+λ) local search: λ children of the best mask by count-preserving swaps, the best K kept."""
    swaps = toolbox.options["swaps"]
    spans = toolbox.layout.spans()
    rng = toolbox.rng  # the run's seeded generator, saved in its checkpoints

    def incumbent(population, k):
        return tools.selBest(population, 1) * k

    def neighbour(individual):
        movable = [(a, b) for a, b in spans if 0 < sum(individual[a:b]) < b - a]
        for _ in range(swaps if movable else 0):  # at sparsity 0 no unit can swap
            start, stop = rng.choice(movable)
            on = [i for i in range(start, stop) if individual[i]]
            off = [i for i in range(start, stop) if not individual[i]]
            individual[rng.choice(on)], individual[rng.choice(off)] = 0, 1
        return (individual,)

    toolbox.register("select_parents", incumbent)
    toolbox.register("mutate", neighbour)
    toolbox.cxpb, toolbox.mutpb = 0.0, 1.0  # no crossover; every child is mutated


search.options = {"swaps": 1}


def check_options(options: dict) -> None:
    if options["swaps"] < 1:
        raise ValueError(f"swaps must be at least 1 (a child must differ from its parent), not {options['swaps']}")


search.check_options = check_options
