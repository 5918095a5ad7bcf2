"""Plug-ins the tests run (tests/test_plugins.py, tests/test_fair_ga.py): small and deterministic (they draw only from
the run's ``toolbox.rng``, through ``toolbox.sample``), and one that breaks the contract in each way a plug-in can.
Importable once this folder is on ``sys.path`` (the tests' fixtures put it there)."""

from __future__ import annotations


class Batches:
    """Ask/tell: ``size`` fresh random masks per ask; from the second ask on also the best mask so far again (a cache
    hit) and at half the run's training length (a multi-fidelity proposal)."""

    options = {"size": 3, "revisit": True, "scale": 1.0, "label": "toy"}  # scale and label: for option conversion
    version = "1"

    @staticmethod
    def check_options(options: dict) -> None:
        if options["size"] < 1:
            raise ValueError(f"size must be at least 1, not {options['size']}")

    def __init__(self, toolbox):
        self.toolbox = toolbox
        self.best: tuple[float, list[int]] | None = None  # (fitness, mask) scored at the run's own length

    def ask(self) -> list:
        tb = self.toolbox
        out: list = [tb.sample() for _ in range(tb.options["size"])]
        if self.best is not None and tb.options["revisit"]:
            half = max(tb.batch_size, tb.train_images // 2)
            out += [list(self.best[1]), (list(self.best[1]), half)]
        return out

    def tell(self, proposals: list, fitnesses: list) -> None:
        for proposal, fitness in zip(proposals, fitnesses):
            if fitness is not None and not isinstance(proposal, tuple):
                if self.best is None or fitness > self.best[0]:
                    self.best = (fitness, proposal)


class Broken:
    """Ask/tell: proposes fresh random masks for ``after`` asks, then breaks the contract as ``fault`` says."""

    options = {"fault": "ask-raises", "after": 1}

    def __init__(self, toolbox):
        self.toolbox, self.asks, self.same = toolbox, 0, None
        if toolbox.options["fault"] == "init-raises":
            raise RuntimeError("cannot start")

    def ask(self):
        tb, fault = self.toolbox, self.toolbox.options["fault"]
        self.asks += 1
        if fault == "same":  # the same mask, ask after ask: trained once, then only cache hits
            self.same = self.same or tb.sample()
            return [list(self.same)]
        if self.asks <= tb.options["after"] or fault == "tell-raises":
            return [tb.sample(), tb.sample()]
        mask = tb.sample()
        if fault == "ask-raises":
            raise RuntimeError("no more ideas\n(second line)")
        if fault == "empty":
            return []
        if fault == "not-a-list":
            return None
        if fault == "short-mask":
            return [mask[:-1]]
        if fault == "not-binary":
            return [[2 if g else 0 for g in mask]]
        if fault == "sparsity":
            mask[mask.index(1)] = 0
            return [mask]
        if fault == "images":
            return [(mask, tb.batch_size - 1)]
        raise AssertionError(f"unknown fault {fault}")

    def tell(self, proposals, fitnesses):
        if self.toolbox.options["fault"] == "tell-raises" and self.asks > self.toolbox.options["after"]:
            raise ValueError("cannot learn from this")


def broken_setup(toolbox) -> None:
    """Toolbox: registers a mutation (or a parent selection) that breaks the contract as ``fault`` says, after
    ``after`` good calls."""
    fault, after = toolbox.options["fault"], toolbox.options["after"]
    if fault == "setup-raises":
        raise KeyError("missing_operator")
    calls = {"n": 0}
    mutate, select_parents = toolbox.mutate, toolbox.select_parents

    def bad_mutate(individual):
        calls["n"] += 1
        if calls["n"] <= after:
            return mutate(individual)
        if fault == "mutate-raises":
            raise RuntimeError("mutation failed")
        if fault == "mutate-sparsity":
            individual[individual.index(1)] = 0
            return (individual,)
        if fault == "mutate-length":
            individual.append(1)
            return (individual,)
        return mutate(individual)

    def bad_select_parents(population, k):
        if fault == "select-raises":
            raise IndexError("tournament of nobody")
        return select_parents(population, k)

    toolbox.register("mutate", bad_mutate)
    toolbox.register("select_parents", bad_select_parents)
    toolbox.cxpb, toolbox.mutpb = 0.0, 1.0


broken_setup.options = {"fault": "mutate-raises", "after": 0}


def repeats(toolbox) -> None:
    """Toolbox: every offspring becomes one of ``pool`` masks drawn at the first mutation (after the run seeded its
    generators), so most offspring repeat a mask scored before: the run's fitness cache answers them."""
    pool: list[list[int]] = []

    def mutate(individual):
        if not pool:
            pool.extend(toolbox.sample() for _ in range(toolbox.options["pool"]))
        individual[:] = toolbox.rng.choice(pool)
        return (individual,)

    toolbox.register("mutate", mutate)
    toolbox.cxpb, toolbox.mutpb = 0.0, 1.0


repeats.options = {"pool": 2}


class Namespace:
    """Holds a plug-in under a dotted attribute path (``toy_plugins:Namespace.Batches``)."""

    Batches = Batches


class NoAskTell:
    """A class without ask() and tell(): not a plug-in."""


NOT_A_PLUGIN = 42


def bad_options(toolbox) -> None:
    """A toolbox plug-in whose ``options`` is not a dict."""


bad_options.options = ["swaps"]
