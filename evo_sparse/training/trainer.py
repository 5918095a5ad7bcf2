"""The brief training that scores a network, and validation accuracy.

Training reads a ``BatchStream``: the exact sequence of augmented uint8 batches, drawn once per run from the run's
seed, so every individual sees the same images in the same order with the same crops and flips (common random
numbers). SGD with Nesterov momentum and a one-cycle learning rate (linear warm-up, linear decay to zero).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.foundations.config import TrainConfig
from evo_sparse.training.data import augment_batch, normalize


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


def lr_at(step: int, steps: int, cfg: TrainConfig) -> float:
    """One-cycle schedule: linear from 0 to ``cfg.lr`` over the warm-up, then linear down to 0."""
    up = max(1, round(cfg.warmup * steps))
    if step < up:
        return cfg.lr * (step + 1) / up
    return cfg.lr * max(0.0, (steps - step) / max(1, steps - up))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD + Nesterov; weight decay on conv and linear weights only, none on BN parameters and biases (the usual
    practice for short trainings). Chosen by name and shape, so batched networks (a [P, 10] bias) follow it too."""
    decayed = {n for n, p in model.named_parameters() if p.ndim > 1 and n.rsplit(".", 1)[-1] == "weight"}
    decay = [p for n, p in model.named_parameters() if n in decayed]
    rest = [p for n, p in model.named_parameters() if n not in decayed]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


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


def scheduled_batches(stream: BatchStream, opt: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device):
    """Yield ``(step, normalised x, y)`` for each batch of ``stream``, with ``opt``'s learning rate set for the step."""
    steps = len(stream.x)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        x = normalize(stream.x[step].to(device, non_blocking=True))
        yield step, x, stream.y[step].to(device, non_blocking=True)


def train(model: nn.Module, stream: BatchStream, cfg: TrainConfig) -> TrainResult:
    """Train ``model`` in place over every batch of ``stream``; raise NonFiniteLoss on NaN/inf."""
    device = next(model.parameters()).device
    model = prepare(model, device)
    opt = make_optimizer(model, cfg)
    forward = forward_of(model, cfg)
    check_every = CHECK_EVERY.get(device.type, 1)
    finite = torch.ones((), dtype=torch.bool, device=device)
    steps = len(stream.x)
    tail = max(1, steps // 4)
    tail_loss = torch.zeros((), device=device)
    model.train()
    start = time.perf_counter()
    for step, x, y in scheduled_batches(stream, opt, cfg, device):
        with autocast(device):
            loss = F.cross_entropy(forward(x), y, label_smoothing=cfg.label_smoothing)
        finite &= torch.isfinite(loss)
        if (step + 1) % check_every == 0 or step == steps - 1:
            if not finite:
                raise NonFiniteLoss(f"loss became non-finite by step {step + 1} of {steps} (last {loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - tail:
            tail_loss += loss.detach()
    _sync(device)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
