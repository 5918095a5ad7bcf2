"""The one trainer: the stepping loop every training runs (``train_steps``), its optimizer and device set-up, the
brief training that scores a network (``train``), and validation accuracy (``evaluate``).

``train_steps`` serves the brief training of one network (``train``), of a population at once
(``population.train_population``) and the full training of the final networks (``full.train_full``): SGD with
Nesterov momentum at the learning rate of a ``schedules.Recipe``, bf16 autocast and channels_last on CUDA, and NaN
checks batched so the device is waited for every ``CHECK_EVERY`` steps, not at every step.

The brief training reads a ``BatchStream``: the exact sequence of augmented uint8 batches, drawn once per run from the
run's seed, so every individual sees the same images in the same order with the same crops and flips (common random
numbers), under a one-cycle learning rate (linear warm-up, linear decay to zero).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.foundations.config import FinalConfig, TrainConfig
from evo_sparse.training.data import augment_batch, normalize
from evo_sparse.training.schedules import Recipe, lr_at


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class BatchStream:
    """Augmented training batches as uint8 ``x`` [steps, B, 3, 32, 32] and labels ``y`` [steps, B]."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def draw(cls, images: torch.Tensor, labels: torch.Tensor, *, total: int, batch_size: int, seed: int) -> BatchStream:
        """``total // batch_size`` batches of a seeded shuffle (reshuffled every epoch), cropped and flipped."""
        g = torch.Generator().manual_seed(seed)
        steps = total // batch_size
        need = steps * batch_size
        epochs = math.ceil(need / len(images))
        order = torch.cat([torch.randperm(len(images), generator=g) for _ in range(epochs)])[:need]
        x = augment_batch(images.cpu()[order], g).view(steps, batch_size, *images.shape[1:])
        return cls(x.to(images.device), labels[order.to(labels.device)].view(steps, batch_size))

    @property
    def images(self) -> int:
        return self.y.numel()


@dataclass(frozen=True)
class TrainResult:
    train_loss: float  # mean loss over the last quarter of the steps
    images: int
    seconds: float


def make_optimizer(model: nn.Module, recipe: Recipe | TrainConfig | FinalConfig) -> torch.optim.SGD:
    """SGD + Nesterov at the lr and momentum of ``Recipe.of(recipe)``; weight decay on conv and linear weights only,
    none on BN parameters and biases (the usual practice for short trainings). Chosen by name and shape, so batched
    networks (a [P, 10] bias) follow it too. ``train_steps`` sets the learning rate again at every step."""
    r = Recipe.of(recipe)
    decayed = {n for n, p in model.named_parameters() if p.ndim > 1 and n.rsplit(".", 1)[-1] == "weight"}
    decay = [p for n, p in model.named_parameters() if n in decayed]
    rest = [p for n, p in model.named_parameters() if n not in decayed]
    groups = [{"params": decay, "weight_decay": r.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=True)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores); full fp32 on the CPU, which has no fast bf16 here."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Device-specific layout: channels_last on CUDA. Not on the CPU, where the backward of a 1x1 stride-2 conv in
    channels_last with fewer than 8 input channels has aborted the process (torch 2.13/2.14)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    return model


def forward_of(model: nn.Module, cfg: TrainConfig):
    """What the training loop calls: ``model``, or ``torch.compile(model)`` with ``--compile`` (parameters shared)."""
    return torch.compile(model) if cfg.compile else model


# How often the loss is checked for NaN/inf: every step on the CPU; on CUDA each check waits for the device.
CHECK_EVERY = {"cpu": 1, "cuda": 50}

Losses = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OnNonFinite = Callable[[int, torch.Tensor, torch.Tensor], None]


def nonfinite_reason(step: int, steps: int, last: float) -> str:
    """``NonFiniteLoss``'s message: found at check ``step`` (0-based) of ``steps``, the loss then ``last``."""
    return f"loss became non-finite by step {step + 1} of {steps} (last {last})"


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    recipe: Recipe,
    *,
    losses: Losses,
    span: range,
    steps: int,
    epochs: int = 1,
    on_nonfinite: OnNonFinite | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The one training loop: an SGD step of ``opt`` on ``model`` (in train mode) per batch; yields ``(step, loss)``
    after each update, the loss detached, with failed members' entries 0.

    ``batches`` holds ``len(span)`` (uint8 images [B, 3, 32, 32], labels [B]) on any device; ``span`` numbers them
    within a training of ``steps`` steps over ``epochs`` epochs, which sets each step's learning rate (``lr_at``).
    ``losses(x, y)``, given the normalised batch on the model's device and run under ``autocast``, gives a scalar loss,
    or one per member ([P]) for P networks trained together; their sum is minimised. Every ``CHECK_EVERY`` steps and at
    the end of ``span`` (one wait for the device each) members whose loss was NaN/inf since the last check fail: they
    leave the minimised sum from that step on, and ``on_nonfinite(step, loss, failed)`` (``failed``: a bool mask shaped
    like the loss) is called after the backward pass, before the update, so it may record them and clear their
    gradients. Without ``on_nonfinite``, NonFiniteLoss is raised instead.
    """
    device = next(model.parameters()).device
    check_every = CHECK_EVERY.get(device.type, 1)
    finite = alive = None
    any_failed = False
    model.train()
    for step, (x, y) in zip(span, batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, recipe, epochs)
        x, y = normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device):
            loss = losses(x, y)
        if finite is None:
            finite, alive = torch.ones_like(loss, dtype=torch.bool), torch.ones_like(loss, dtype=torch.bool)
        finite &= torch.isfinite(loss)  # on the device: no wait
        failed = None
        if (step + 1) % check_every == 0 or step == span[-1]:
            newly = alive & ~finite
            if bool(newly.any()):  # the wait
                if on_nonfinite is None:
                    raise NonFiniteLoss(nonfinite_reason(step, steps, loss[newly].flatten()[0].item()))
                failed, any_failed = newly, True
                alive &= finite
        opt.zero_grad(set_to_none=True)
        # the failed add nothing and get zero gradients; where() of all-true would give the same bits, at a cost
        (torch.where(alive, loss, 0.0) if any_failed else loss).sum().backward()
        if failed is not None:
            on_nonfinite(step, loss, failed)
        opt.step()
        yield step, (torch.where(alive, loss.detach(), 0.0) if any_failed else loss.detach())


def train(model: nn.Module, stream: BatchStream, cfg: TrainConfig) -> TrainResult:
    """Train ``model`` in place over every batch of ``stream`` (``Recipe.brief`` of ``cfg``); raise NonFiniteLoss on
    NaN/inf."""
    device = next(model.parameters()).device
    model = prepare(model, device)
    opt = make_optimizer(model, cfg)
    forward = forward_of(model, cfg)
    steps = len(stream.x)
    tail = max(1, steps // 4)
    tail_loss = torch.zeros((), device=device)
    start = time.perf_counter()

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(forward(x), y, label_smoothing=cfg.label_smoothing)

    batches = zip(stream.x, stream.y)
    run = train_steps(model, opt, batches, Recipe.brief(cfg), losses=loss_of, span=range(steps), steps=steps)
    for step, loss in run:
        if step >= steps - tail:
            tail_loss += loss
    synchronize(device)
    return TrainResult(float(tail_loss) / tail, steps * stream.x.shape[1], time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode on uint8 ``images``."""
    device = next(model.parameters()).device
    model.eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device))
        y = labels[i : i + batch_size].to(device)
        with autocast(device):
            out = model(x).float()
        loss += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    return float(correct) / len(images), float(loss) / len(images)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA), so wall-clock times include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
