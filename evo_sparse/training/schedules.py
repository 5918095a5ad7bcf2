"""A training recipe (optimizer settings and learning-rate schedule), and the schedules, one function per name.

Two recipes exist: the brief training that scores a mask (``Recipe.brief`` of a ``TrainConfig``: one-cycle) and the
full training of the final networks (``Recipe.full`` of a ``FinalConfig``: step, cosine or one-cycle). Both warm up
the same way and read their schedule from the one table, ``SCHEDULES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from evo_sparse.foundations.config import STEP_MILESTONES, FinalConfig, TrainConfig


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: SGD + Nesterov at ``lr`` under the named schedule, in batches of ``batch_size``."""

    lr: float  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on conv and linear weights only (``trainer.make_optimizer``)
    warmup: float = 0.0  # fraction of the steps warming the learning rate up linearly
    schedule: str = "onecycle"  # a key of SCHEDULES
    gamma: float = 0.2  # step schedule: factor at each of STEP_MILESTONES
    label_smoothing: float = 0.0
    batch_size: int = 64

    @classmethod
    def brief(cls, t: TrainConfig) -> Recipe:
        """The brief (fitness) training of ``t``: one-cycle."""
        return cls(**_common(t), schedule="onecycle")

    @classmethod
    def full(cls, f: FinalConfig) -> Recipe:
        """The full (final) training of ``f``: its schedule, over its epochs."""
        return cls(**_common(f), schedule=f.schedule, gamma=f.gamma)

    @classmethod
    def of(cls, cfg: Recipe | TrainConfig | FinalConfig) -> Recipe:
        """``cfg`` itself, or the recipe of a ``TrainConfig`` (``brief``) or ``FinalConfig`` (``full``)."""
        if isinstance(cfg, Recipe):
            return cfg
        if isinstance(cfg, TrainConfig):
            return cls.brief(cfg)
        if isinstance(cfg, FinalConfig):
            return cls.full(cfg)
        raise TypeError(f"a Recipe, TrainConfig or FinalConfig is needed, not {type(cfg).__name__}")


# A schedule: (step, steps, warm-up steps, epochs, recipe) -> learning rate, for the steps after the warm-up.
Schedule = Callable[[int, int, int, int, Recipe], float]


def _common(c: TrainConfig | FinalConfig) -> dict:
    """The fields a brief and a full training recipe spell alike."""
    keys = ("lr", "momentum", "weight_decay", "warmup", "label_smoothing", "batch_size")
    return {k: getattr(c, k) for k in keys}


def step_decay(step: int, steps: int, up: int, epochs: int, r: Recipe) -> float:
    """x ``gamma`` at each of STEP_MILESTONES (fractions of the epochs; the WRN paper's 60/120/160 of 200)."""
    epoch = step * epochs // steps
    return r.lr * r.gamma ** sum(epoch >= round(m * epochs) for m in STEP_MILESTONES)


def cosine(step: int, steps: int, up: int, epochs: int, r: Recipe) -> float:
    """Half a cosine from ``lr`` down to 0 over the steps after the warm-up."""
    progress = (step - up) / max(1, steps - up)
    return r.lr * 0.5 * (1 + math.cos(math.pi * progress))


def onecycle(step: int, steps: int, up: int, epochs: int, r: Recipe) -> float:
    """Linear from ``lr`` (at the last warm-up step and the one after it) down to 0 at ``steps``."""
    return r.lr * max(0.0, (steps - step) / max(1, steps - up))


SCHEDULES: dict[str, Schedule] = {"step": step_decay, "cosine": cosine, "onecycle": onecycle}


def warmup_steps(steps: int, recipe: Recipe) -> int:
    """Steps of linear warm-up: ``warmup`` of ``steps``, at least one (a warm-up of one step starts at ``lr``)."""
    return max(1, round(recipe.warmup * steps))


def lr_at(step: int, steps: int, recipe: Recipe | TrainConfig | FinalConfig, epochs: int = 1) -> float:
    """Learning rate at ``step`` (0-based) of ``steps`` spread over ``epochs``: linear from ``lr / up`` to ``lr``
    over the ``up = warmup_steps`` first steps, then the recipe's schedule. KeyError for an unknown schedule."""
    r = Recipe.of(recipe)
    up = warmup_steps(steps, r)
    if step < up:
        return r.lr * (step + 1) / up
    return SCHEDULES[r.schedule](step, steps, up, epochs, r)
