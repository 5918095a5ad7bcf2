"""Full training: one network over whole epochs of the training split, measured on the validation split after every
epoch and on the test split at the end (what the final networks get). The steps are ``trainer.train_steps``'s."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.training.data import Splits, augment_batch
from evo_sparse.training.schedules import Recipe
from evo_sparse.training.trainer import NonFiniteLoss, evaluate, make_optimizer, prepare, train_steps

CHUNK_IMAGES = 8192  # images augmented at a time: bounds the memory of one epoch's augmentation


def epoch_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch of augmented uint8 batches: a seeded shuffle (last partial batch dropped), cropped and flipped."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g).to(x.device)
    steps = len(x) // batch_size
    per_chunk = max(1, CHUNK_IMAGES // batch_size) * batch_size
    for start in range(0, steps * batch_size, per_chunk):
        idx = order[start : min(start + per_chunk, steps * batch_size)]
        xs, ys = augment_batch(x[idx], g), y[idx]
        for i in range(0, len(idx), batch_size):
            yield xs[i : i + batch_size], ys[i : i + batch_size]


def train_full(
    model: nn.Module,
    splits: Splits,
    recipe: Recipe,
    *,
    epochs: int,
    data_seed: Callable[[int], int],
    eval_batch_size: int = 500,
) -> dict[str, Any]:
    """Train ``model`` in place for ``epochs`` epochs of ``splits.train_x`` in batches of ``recipe.batch_size`` (the
    data order and augmentation of epoch ``e`` drawn from ``data_seed(e)``); the training's part of a record.

    Keys: the per-epoch curves ``val_acc``, ``val_loss`` and ``train_loss`` (mean over the epoch; None where not
    finite) and ``epoch_seconds``; ``status`` ("ok", or "failed" with a ``reason`` when a loss became NaN/inf, the
    curves then ending at the last whole epoch); ``final_val_acc``, ``best_val_acc``; ``final_test_acc`` and
    ``test_loss`` (None when failed); ``train_images``. Prepares the model for its device (``trainer.prepare``).
    """
    device = next(model.parameters()).device
    model = prepare(model, device)
    opt = make_optimizer(model, recipe)
    per_epoch = len(splits.train_x) // recipe.batch_size
    steps = per_epoch * epochs
    curves: dict[str, list[float]] = {"val_acc": [], "val_loss": [], "train_loss": [], "epoch_seconds": []}

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)

    for epoch in range(epochs):
        t0, step0 = time.perf_counter(), epoch * per_epoch
        total = torch.zeros((), device=device)
        batches = epoch_batches(splits.train_x, splits.train_y, recipe.batch_size, data_seed(epoch))
        span = range(step0, step0 + per_epoch)
        run = train_steps(model, opt, batches, recipe, losses=loss_of, span=span, steps=steps, epochs=epochs)
        try:
            for _, loss in run:
                total += loss
        except NonFiniteLoss as exc:
            return _result(curves, status="failed", reason=str(exc))
        acc, val_loss = evaluate(model, splits.val_x, splits.val_y, eval_batch_size)
        curves["val_acc"].append(acc)
        curves["val_loss"].append(val_loss)
        curves["train_loss"].append(float(total) / per_epoch)
        curves["epoch_seconds"].append(time.perf_counter() - t0)
    test_acc, test_loss = evaluate(model, splits.test_x, splits.test_y, eval_batch_size)
    if not math.isfinite(test_loss) or not all(map(math.isfinite, curves["val_loss"])):
        return _result(curves, status="failed", reason="validation or test loss is not finite")
    return _result(curves, test_acc=test_acc, test_loss=test_loss, images=steps * recipe.batch_size)


def _result(curves, *, status="ok", reason=None, test_acc=None, test_loss=None, images=None) -> dict[str, Any]:
    acc = curves["val_acc"]
    return curves | {
        "status": status,
        "reason": reason,
        "final_val_acc": acc[-1] if acc else None,
        "best_val_acc": max(acc) if acc else None,
        "final_test_acc": test_acc,
        "test_loss": test_loss,
        "train_images": images,
        "val_loss": [v if math.isfinite(v) else None for v in curves["val_loss"]],
        "train_loss": [v if math.isfinite(v) else None for v in curves["train_loss"]],
    }
