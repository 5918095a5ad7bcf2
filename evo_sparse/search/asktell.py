"""The loop of an ask/tell plug-in (``plugins``): ask for proposals, score them, tell the fitness, until the budget of
trainings is spent.

Each ``ask()`` is one "generation" of the run's files: its proposals are journaled, the hall of fame and logbook are
updated and a checkpoint written after it, so ``show``, ``final`` and the figures read an ask/tell run as any other.
Resuming replays the plug-in from the start (built afresh, the generators seeded as at the start) while the journal
answers every proposal it already holds; a plug-in that draws only from ``toolbox.rng`` replays exactly. Every
failure of the plug-in (it raises, proposes a mask of the wrong size or sparsity, nothing, or only masks already
scored, again and again) stops the run with an ``AlgorithmError`` naming it; the journal keeps what was scored.
"""

from __future__ import annotations

from typing import Any

from deap import base, creator, tools

from evo_sparse.foundations.config import SearchConfig
from evo_sparse.foundations.errors import AlgorithmError
from evo_sparse.search.algorithms import Hooks, SearchState, evaluate_all, record_generation, statistics
from evo_sparse.search.plugins import guarded

# proposals in a row that cost no training (all scored before) before a plug-in is taken to loop without proposing
IDLE_LIMIT = 1000


def run(toolbox: base.Toolbox, cfg: SearchConfig, searcher: Any, name: str, hooks: Hooks | None = None) -> SearchState:
    """Ask ``searcher`` (an ask/tell plug-in's instance, ``name`` in messages) and tell it, until the budget is spent;
    the final state."""
    hooks = hooks or Hooks()
    state = SearchState(hall_of_fame=tools.HallOfFame(cfg.survivors))
    stats = statistics()
    idle = 0
    while not state.finished:
        gen = state.generation
        proposals = guarded(name, "ask()", searcher.ask)
        individuals = [individual(toolbox, name, p) for p in _listed(name, proposals)]
        hooks.on_generation_start(gen, len(individuals))
        left_before = hooks.budget_left()
        told, cut = evaluate_all(toolbox, individuals, gen, hooks)
        fitnesses = [ind.record["fitness"] if ind.record.get("status") == "ok" else None for ind in told]
        if told:
            scored = [_proposal(i) for i in told]
            guarded(name, "tell()", lambda scored=scored, fitnesses=fitnesses: searcher.tell(scored, fitnesses))
        record_generation(state, gen, told, len(told), stats)
        left = hooks.budget_left()
        spent = left_before is not None and left is not None and left < left_before
        idle = 0 if spent else idle + len(individuals)
        state.finished = cut or (left is not None and left <= 0)
        hooks.on_generation_end(state)
        if idle >= IDLE_LIMIT and not state.finished:
            raise AlgorithmError(
                f"algorithm {name} proposed {idle} masks in a row that were all scored before, so the budget is never "
                "spent: it loops without proposing anything new; fix it and run the same command to resume"
            )
    return state


def _listed(name: str, proposals: Any) -> list:
    if isinstance(proposals, (str, bytes)) or not hasattr(proposals, "__iter__"):
        raise AlgorithmError(f"algorithm {name}: ask() returned {type(proposals).__name__}, not a list of masks")
    proposals = list(proposals)
    if not proposals:
        raise AlgorithmError(
            f"algorithm {name}: ask() proposed no masks; it must propose at least one until the run's budget is spent"
        )
    return proposals


def individual(toolbox: base.Toolbox, name: str, proposal: Any):
    """A DEAP individual of a proposal (a mask, or ``(mask, train_images)``), checked against the run's network and
    sparsity; AlgorithmError naming the plug-in otherwise."""
    images = None
    if isinstance(proposal, tuple) and len(proposal) == 2 and not isinstance(proposal[1], (list, tuple)):
        proposal, images = proposal
        if not isinstance(images, int) or isinstance(images, bool) or images < toolbox.batch_size:
            raise AlgorithmError(
                f"algorithm {name}: ask() gave a training length of {images!r} images; it must be a whole number of "
                f"at least one batch ({toolbox.batch_size})"
            )
        images = None if images == toolbox.train_images else images
    try:
        genome = [int(g) for g in proposal]
        toolbox.check(genome)
    except (TypeError, ValueError) as exc:
        raise AlgorithmError(f"algorithm {name}: ask() proposed {exc}") from None
    ind = creator.MaskIndividual(genome)
    ind.images = images
    return ind


def _proposal(ind) -> Any:
    """What ``tell`` receives for an individual: its mask, paired with its training length when that was asked."""
    return list(ind) if ind.images is None else (list(ind), ind.images)
