"""Whole-population training: P compacted WRNs of equal widths trained in one pass on one device.

The individuals are stacked along channels (individual-major: channel ``i * C + c`` is channel ``c`` of individual
``i``): each convolution becomes one grouped convolution (``groups=P``; the stem, which reads the shared images, an
ordinary one with ``P * C`` outputs), each BatchNorm one over ``P * C`` channels, the classifier a batched matmul.
No operation mixes individuals, so each keeps its own weights, BatchNorm statistics and optimizer state and ends
where training it alone ends (to float rounding), whatever another one does, NaN included.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.foundations.config import TrainConfig
from evo_sparse.foundations.errors import EvoSparseError
from evo_sparse.models.masks import Mask
from evo_sparse.models.registry import Architecture
from evo_sparse.training.data import normalize
from evo_sparse.training.records import fitness_record
from evo_sparse.training.schedules import Recipe
from evo_sparse.training.trainer import (
    BatchStream,
    autocast,
    forward_of,
    make_optimizer,
    nonfinite_reason,
    prepare,
    synchronize,
    train_steps,
)


def population_network(arch: Architecture, parent: dict[str, torch.Tensor], masks: Sequence[Mask]) -> nn.Module:
    """The compacted sub-networks of ``masks`` (all of equal ``widths()``) at the parent's initial weights, as one
    batched network (``Architecture.batched``: forward -> [B, P, 10], ``member``, ``unstack``, ``silence``)."""
    widths = masks[0].widths()
    if any(m.widths() != widths for m in masks):
        raise ValueError("a population network needs masks that keep the same number of channels in every unit")
    model = arch.batched(widths, len(masks))
    if model is None:
        raise ValueError(f"{arch.label} has no batched form; evaluate its masks one at a time")
    model.load_members([arch.compact(parent, m) for m in masks])
    return model


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """``train.prepare``, and channels_last on the CPU too: there it makes oneDNN's grouped convolutions ~2x faster."""
    return prepare(model, device).to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class MemberResult:
    """One individual's training: like ``train.TrainResult``, with ``reason`` set (and no loss) when it diverged."""

    train_loss: float | None  # mean loss over the last quarter of the steps
    images: int
    seconds: float  # the pass's wall time divided among the members
    reason: str | None = None  # train.NonFiniteLoss's message, when the loss became NaN or infinite


def member_losses(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Each individual's mean cross-entropy over the batch: logits [B, P, K], labels [B] -> [P]."""
    b, p, k = logits.shape
    losses = F.cross_entropy(
        logits.reshape(b * p, k), y.repeat_interleave(p), label_smoothing=label_smoothing, reduction="none"
    )
    return losses.view(b, p).mean(0)


def train_population(model: nn.Module, stream: BatchStream, cfg: TrainConfig) -> list[MemberResult]:
    """Train every individual in place over every batch of ``stream``, as ``train.train`` trains one.

    The loss is the sum of the individuals' mean losses, so each one's gradient is its own (the gradient of a sum is
    one for every term, whatever the others' values). Losses are checked for NaN/inf when ``train.train`` checks
    them; an individual found non-finite gets ``train.NonFiniteLoss``'s message, is left out of the loss and
    silenced, and the others go on.
    """
    device = next(model.parameters()).device
    model = _prepare(model, device)
    opt = make_optimizer(model, cfg)
    forward = forward_of(model, cfg)
    steps, p = len(stream.x), model.population
    tail = max(1, steps // 4)
    tail_loss = torch.zeros(p, device=device)  # float32, as in train.train
    reasons: list[str | None] = [None] * p
    start = time.perf_counter()

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return member_losses(forward(x), y, cfg.label_smoothing)

    def on_nonfinite(step: int, losses: torch.Tensor, failed: torch.Tensor) -> None:
        for i in failed.nonzero().flatten().tolist():
            reasons[i] = nonfinite_reason(step, steps, losses[i].item())
            model.silence(i, opt)  # its NaNs never left its own channels; zero them so none stays

    batches = zip(stream.x, stream.y)
    recipe = Recipe.brief(cfg)
    run = train_steps(
        model, opt, batches, recipe, losses=loss_of, span=range(steps), steps=steps, on_nonfinite=on_nonfinite
    )
    for step, losses in run:
        if step >= steps - tail:
            tail_loss += losses
    synchronize(device)
    seconds = (time.perf_counter() - start) / p
    images = steps * stream.x.shape[1]
    return [MemberResult(None if r else float(tail_loss[i]) / tail, images, seconds, r) for i, r in enumerate(reasons)]


@torch.no_grad()
def evaluate_population(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> list[tuple[float, float]]:
    """(accuracy, mean cross-entropy) of every individual in eval mode on uint8 ``images``, as ``train.evaluate``."""
    device = next(model.parameters()).device
    model = _prepare(model, device)
    model.eval()
    correct = torch.zeros(model.population, device=device)
    loss = torch.zeros(model.population, device=device)
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device))
        y = labels[i : i + batch_size].to(device)
        with autocast(device):
            out = model(x).float()  # [B, P, 10]
        loss += member_losses(out, y) * len(y)
        correct += (out.argmax(2) == y[:, None]).sum(0)
    return [(float(c) / len(images), float(v) / len(images)) for c, v in zip(correct.tolist(), loss.tolist())]


# Individuals per population on the CPU. WRN-16-2 at s = 0.8, cpu preset, 1 thread, CPU seconds per individual: one at
# a time 6.05; P = 2: 4.4, P = 4: 4.2, P = 10: 5.2, P = 20: 5.3 (larger populations outgrow the caches).
CPU_CHUNK = 4


def evaluate_masks(
    evaluator, masks: Sequence[Mask | None], chunk: int | None = None, slots: bool = False, replicate=None
) -> list[dict[str, Any] | None]:
    """``evaluator.evaluate_alone`` for every mask under ``replicate`` (a ``fitness.Replicate``; default: the
    evaluator's first), trained together: records in input order, with the same keys.

    Masks of equal ``widths()`` are trained as one population of at most ``chunk`` (default: ``CPU_CHUNK`` on the
    CPU, all of them elsewhere). With ``slots`` (how runs use it), mask ``j`` trains as member ``j % chunk`` of a
    population of exactly ``chunk``, ``masks[j - j % chunk : ...]``; a ``None`` (or missing) member is filled with a
    copy of a real one and gets a ``None`` record. A member's result depends on its population size and slot (the
    batched kernels round by position), never on the other members, so a fixed slot gives the same value every time.
    A record's ``seconds`` is its population's wall time divided among the real members. A population that runs out
    of device memory is split in two and retried (then its values differ in rounding); one that raises anything
    else (and a mask given an injected fault) goes one by one through ``evaluator.evaluate_alone``, which records
    failures. EvoSparseError is raised.
    """
    replicate = replicate or evaluator.replicates[0]
    size = chunk or (CPU_CHUNK if evaluator.device.type == "cpu" else max(1, len(masks)))
    alone = [j for j, m in enumerate(masks) if m is not None and _injected_fault(evaluator.cfg.seed, m)]
    pieces: list[list[int | None]]
    if slots:
        windows = [list(range(i, i + size)) for i in range(0, len(masks), size)]
        pieces = [
            [j if j < len(masks) and masks[j] is not None and j not in alone else None for j in w] for w in windows
        ]
    else:
        groups: dict[tuple, list[int | None]] = {}
        for j, m in enumerate(masks):
            if m is not None and j not in alone:
                groups.setdefault(tuple(m.widths().items()), []).append(j)
        pieces = [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
    records: list[dict[str, Any] | None] = [None] * len(masks)
    while pieces:
        piece = pieces.pop(0)
        real = [j for j in piece if j is not None]
        if not real:
            continue
        try:
            members = [masks[real[0] if j is None else j] for j in piece]
            trained = _evaluate_piece(evaluator, members, [j is not None for j in piece], replicate)
            for j, record in zip(real, trained):
                records[j] = record
            continue
        except EvoSparseError:
            raise
        except Exception as exc:  # out of memory: split the population; anything else: one by one, which records it
            oom = isinstance(exc, torch.cuda.OutOfMemoryError)
            if not oom:
                warnings.warn(f"population training failed ({exc!r}); its masks go one by one", stacklevel=2)
            split = oom and len(piece) > 1
        if evaluator.device.type == "cuda":  # outside the except block, so the failed attempt's tensors are released
            torch.cuda.empty_cache()
        if split:
            pieces[:0] = [piece[: len(piece) // 2], piece[len(piece) // 2 :]]
        else:
            alone += real
    for j in alone:
        # alone, it retries at half the batch size when out of memory
        records[j] = evaluator.evaluate_alone(masks[j], replicate)
    return records


def _evaluate_piece(evaluator, masks: list[Mask], real: list[bool], replicate) -> list[dict[str, Any]]:
    """Records of the ``real`` ones of ``masks`` (equal widths; the others fill the population), trained as one
    population; raises what building or training raises."""
    cfg, dev = evaluator.cfg, evaluator.device
    start = time.perf_counter()
    params, macs = evaluator.arch.cost(masks[0].widths())
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(replicate.train_seed)  # any stray randomness is common to all individuals of a replicate
        model = population_network(evaluator.arch, evaluator.parent, masks)
        trained = train_population(model.to(dev), replicate.stream, cfg.train)
        # eval_batch_size images per network, as one at a time: P times the images would outgrow the caches
        batch = max(1, cfg.train.eval_batch_size // len(masks))
        scores = evaluate_population(model, evaluator.val_x, evaluator.val_y, batch)
    seconds = (time.perf_counter() - start) / sum(real)
    records = []
    for mask, result, (acc, val_loss), keep in zip(masks, trained, scores, real):
        if not keep:
            continue
        records.append(
            fitness_record(
                sparsity=mask.sparsity,
                params=params,
                macs=macs,
                accuracy=acc,
                val_loss=val_loss,
                train_loss=result.train_loss,
                reason=result.reason,
                train_images=result.images,
                batch_size=cfg.train.batch_size,
                seconds=seconds,
            )
        )
    return records


def _injected_fault(seed: int, mask: Mask) -> bool:
    """Whether a test injects a fitness fault into this mask (``faults``): those take the one-by-one path."""
    try:
        from evo_sparse.foundations.faults import fitness_fault
    except ImportError:
        return False
    return fitness_fault(seed, mask.encode()) is not None
