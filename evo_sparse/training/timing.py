"""How long a network takes to train and to score on a device, measured in a few steps on random images (what
``--dry-run`` extrapolates from). Loads no data; trains a throw-away copy of the network, nothing of a run's."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.devices import CPU_THREADS
from evo_sparse.models.masks import Mask
from evo_sparse.models.registry import architecture
from evo_sparse.training.fitness import parent_state
from evo_sparse.training.schedules import Recipe
from evo_sparse.training.trainer import evaluate, make_optimizer, prepare, synchronize, train_steps

STEPS = 5  # timed training steps, after one warm-up step
TIME_S = 3.0  # ... or fewer, once they took this long (a large network on a CPU)


@dataclass(frozen=True)
class Timing:
    """Seconds per training image (``train_s``), per image scored forward (``score_s``) and to build the network
    (``build_s``: compacting the parent and moving it to the device)."""

    train_s: float
    score_s: float
    build_s: float


def time_network(cfg: RunConfig, mask: Mask, batch_size: int, eval_batch_size: int, device: torch.device) -> Timing:
    """Time ``mask``'s compacted network of ``cfg`` on ``device`` as every training runs it: the one trainer
    (``trainer.train_steps``: autocast, channels_last on CUDA; ``CPU_THREADS`` threads on the CPU) in batches of
    ``batch_size``, after one warm-up step; then one forward batch of at most ``eval_batch_size`` images, warmed up too.
    ``--compile`` and ``--pack`` are not timed."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        arch = architecture(cfg.model)
        parent = parent_state(cfg)
        start = time.perf_counter()
        model = prepare(arch.sub_network(parent, mask).to(device), device)
        build_s = time.perf_counter() - start
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
        y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
        recipe = Recipe.brief(cfg.train)
        steps = train_steps(
            model,
            make_optimizer(model, recipe),
            itertools.repeat((x, y)),
            recipe,
            losses=lambda a, b: F.cross_entropy(model(a), b),
            span=range(1 + STEPS),
            steps=1 + STEPS,
            on_nonfinite=lambda *_: None,  # random images may diverge: the time is what counts
        )
        next(steps)
        synchronize(device)
        start, timed = time.perf_counter(), 0
        for _ in steps:
            timed += 1
            if time.perf_counter() - start > TIME_S:
                break
        synchronize(device)
        train_s = (time.perf_counter() - start) / (timed * batch_size)
        n = min(eval_batch_size, batch_size)
        evaluate(model, x[:n], y[:n], n)
        start = time.perf_counter()
        evaluate(model, x[:n], y[:n], n)
        score_s = (time.perf_counter() - start) / n
    finally:
        torch.set_num_threads(threads)
    return Timing(train_s, score_s, build_s)
