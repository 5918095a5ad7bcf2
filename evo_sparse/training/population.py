"""Whole-population training: P compacted WRNs of equal widths trained in one pass on one device.

The individuals are stacked along channels (individual-major: channel ``i * C + c`` is channel ``c`` of individual
``i``): each convolution becomes one grouped convolution (``groups=P``; the stem, which reads the shared images, an
ordinary one with ``P * C`` outputs), each BatchNorm one over ``P * C`` channels, the classifier a batched matmul.
No operation mixes individuals, so each keeps its own weights, BatchNorm statistics and optimizer state and ends
where training it alone ends (to float rounding), whatever another one does, NaN included.
"""

from __future__ import annotations

import math
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
from evo_sparse.models import wrn
from evo_sparse.models.masks import Mask, compact_state
from evo_sparse.training.data import normalize
from evo_sparse.training.trainer import CHECK_EVERY, BatchStream, autocast, forward_of, prepare, scheduled_batches

_SHARED = "num_batches_tracked"  # the one state entry that is not per individual (every member counts the same steps)


class GroupedBlock(nn.Module):
    """``wrn.Block`` for P individuals at once: the same layers and names, convolutions grouped by individual."""

    def __init__(self, p: int, c_in: int, c_inner: int, c_out: int, stride: int, project: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(p * c_in)
        self.conv1 = nn.Conv2d(p * c_in, p * c_inner, 3, stride, 1, bias=False, groups=p)
        self.bn2 = nn.BatchNorm2d(p * c_inner)
        self.conv2 = nn.Conv2d(p * c_inner, p * c_out, 3, 1, 1, bias=False, groups=p)
        # The 1x1 shortcut's stride is taken by slicing: the same function, and it keeps oneDNN off its strided 1x1
        # path, whose workspace overrun (oneDNN issue 6035: channels_last, < 8 input channels) corrupts the heap.
        self.stride = stride
        self.shortcut = nn.Conv2d(p * c_in, p * c_out, 1, 1, 0, bias=False, groups=p) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return h + (self.shortcut(a[:, :, :: self.stride, :: self.stride]) if self.shortcut is not None else x)


class BatchedLinear(nn.Module):
    """P linear classifiers: weight [P, out, C], bias [P, out]; input [B, P, C] -> [B, P, out]."""

    def __init__(self, p: int, c: int, out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(p, out, c))
        self.bias = nn.Parameter(torch.empty(p, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bpc,pkc->bpk", x, self.weight) + self.bias


class PopulationWRN(nn.Module):
    """P WRN-depth-width networks built at the same ``widths``; forward(x [B,3,32,32]) -> logits [B, P, 10].

    Its state-dict keys are those of ``wrn.WideResNet``; every entry but ``num_batches_tracked`` holds the P
    individuals' tensors concatenated along dim 0 (the classifier's stacked: [P, 10, C] and [P, 10]).
    """

    def __init__(self, depth: int, width: int, widths: dict[str, int], population: int):
        super().__init__()
        self.depth, self.width, self.widths, self.population = depth, width, dict(widths), population
        w, n, p = self.widths, wrn.blocks_per_stage(depth), population
        prev = wrn.stem_unit_name(width)
        self.stem = nn.Conv2d(3, p * w[prev], 3, 1, 1, bias=False)
        self.stages = nn.ModuleList()
        for s in (1, 2, 3):
            blocks = nn.ModuleList()
            for b in range(n):
                c_in = prev if b == 0 else wrn.stream(s)
                stride = 2 if (b == 0 and s > 1) else 1
                project = c_in != wrn.stream(s)
                blocks.append(GroupedBlock(p, w[c_in], w[wrn.inner(s, b)], w[wrn.stream(s)], stride, project))
            self.stages.append(blocks)
            prev = wrn.stream(s)
        self.bn = nn.BatchNorm2d(p * w[wrn.stream(3)])
        self.fc = BatchedLinear(p, w[wrn.stream(3)], wrn.NUM_CLASSES)
        with torch.device("meta"):
            self._single = {k: v.shape for k, v in wrn.WideResNet(depth, width, widths).state_dict().items()}

    @classmethod
    def from_masks(
        cls, depth: int, width: int, parent: dict[str, torch.Tensor], param_units: dict, masks: Sequence[Mask]
    ) -> PopulationWRN:
        """The compacted sub-networks of ``masks`` (all of equal ``widths()``) at the parent's initial weights."""
        widths = masks[0].widths()
        if any(m.widths() != widths for m in masks):
            raise ValueError("a population network needs masks that keep the same number of channels in every unit")
        model = cls(depth, width, widths, len(masks))
        states = [compact_state(parent, param_units, m) for m in masks]
        own = model.state_dict()
        stack = {
            k: torch.stack([s[k] for s in states]).view(v.shape) for k, v in own.items() if not k.endswith(_SHARED)
        }
        model.load_state_dict(states[0] | stack)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.to(self.stem.weight.dtype))
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).view(len(x), self.population, -1)
        return self.fc(x)

    def member(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (a parameter, buffer or gradient of this model) viewed as [P, ...]: entry i is individual i's.

        A view whatever the memory format (channels_last included), so writing into it writes into ``tensor``.
        """
        return tensor.unflatten(0, (self.population, -1))

    def unstack(self, i: int) -> dict[str, torch.Tensor]:
        """Individual ``i``'s state dict (copies), loadable into ``wrn.WideResNet(depth, width, widths)``."""
        one = {k: v if k.endswith(_SHARED) else self.member(v)[i] for k, v in self.state_dict().items()}
        return {k: v.reshape(self._single[k]).clone(memory_format=torch.contiguous_format) for k, v in one.items()}

    @torch.no_grad()
    def silence(self, i: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero individual ``i``'s weights, statistics, gradients and momentum: it computes zeros from now on."""
        for t in self.state_dict().values():
            if t.is_floating_point():  # zero BN statistics too: a zero input, mean and variance give a zero output
                self.member(t)[i] = 0.0
        for p in self.parameters():
            if p.grad is not None:
                self.member(p.grad)[i] = 0.0
            if optimizer is not None and (buf := optimizer.state.get(p, {}).get("momentum_buffer")) is not None:
                self.member(buf)[i] = 0.0


def _prepare(model: PopulationWRN, device: torch.device) -> PopulationWRN:
    """``train.prepare``, and channels_last on the CPU too: there it makes oneDNN's grouped convolutions ~2x faster."""
    return prepare(model, device).to(memory_format=torch.channels_last)


def make_optimizer(model: PopulationWRN, cfg: TrainConfig) -> torch.optim.SGD:
    """``train.make_optimizer``'s recipe: weight decay on conv and classifier weights, none on BN or the bias.

    Chosen by module, not by ``ndim`` (the stacked classifier bias is 2-D).
    """
    decay = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, BatchedLinear))]
    rest = [p for p in model.parameters() if not any(p is q for q in decay)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


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


def train_population(model: PopulationWRN, stream: BatchStream, cfg: TrainConfig) -> list[MemberResult]:
    """Train every individual in place over every batch of ``stream``, as ``train.train`` trains one.

    The loss is the sum of the individuals' mean losses, so each one's gradient is its own (the gradient of a sum is
    one for every term, whatever the others' values). Losses are checked for NaN/inf when ``train.train`` checks
    them; an individual found non-finite gets ``train.NonFiniteLoss``'s message, is left out of the loss and
    silenced, and the others go on.
    """
    device = model.stem.weight.device
    model = _prepare(model, device)
    opt = make_optimizer(model, cfg)
    forward = forward_of(model, cfg)
    check_every = CHECK_EVERY.get(device.type, 1)
    steps, p = len(stream.x), model.population
    tail = max(1, steps // 4)
    tail_loss = torch.zeros(p, device=device)  # float32, as in train.train
    alive = torch.ones(p, dtype=torch.bool, device=device)
    finite = torch.ones(p, dtype=torch.bool, device=device)
    reasons: list[str | None] = [None] * p
    model.train()
    start = time.perf_counter()
    for step, x, y in scheduled_batches(stream, opt, cfg, device):
        with autocast(device):
            losses = member_losses(forward(x), y, cfg.label_smoothing)
        finite &= torch.isfinite(losses)
        dead: list[int] = []
        if ((step + 1) % check_every == 0 or step == steps - 1) and not bool((finite | ~alive).all()):
            dead = (alive & ~finite).nonzero().flatten().tolist()
            for i in dead:
                last = losses[i].item()
                reasons[i] = f"loss became non-finite by step {step + 1} of {steps} (last {last})"
            alive &= finite
        opt.zero_grad(set_to_none=True)
        torch.where(alive, losses, 0.0).sum().backward()  # the failed add nothing and get zero gradients
        for i in dead:  # their NaNs never left their own channels; zero them so none stays
            model.silence(i, opt)
        opt.step()
        if step >= steps - tail:
            tail_loss += torch.where(alive, losses.detach(), 0.0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / p
    images = steps * stream.x.shape[1]
    return [MemberResult(None if r else float(tail_loss[i]) / tail, images, seconds, r) for i, r in enumerate(reasons)]


@torch.no_grad()
def evaluate_population(
    model: PopulationWRN, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> list[tuple[float, float]]:
    """(accuracy, mean cross-entropy) of every individual in eval mode on uint8 ``images``, as ``train.evaluate``."""
    device = model.stem.weight.device
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
    from evo_sparse.training.fitness import FAILED, OK  # here: fitness may come to import this module

    cfg, dev = evaluator.cfg, evaluator.device
    start = time.perf_counter()
    params, macs = wrn.cost(cfg.model.depth, cfg.model.width, masks[0].widths())
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(replicate.train_seed)  # any stray randomness is common to all individuals of a replicate
        model = PopulationWRN.from_masks(
            cfg.model.depth, cfg.model.width, evaluator.parent, evaluator.param_units, masks
        )
        trained = train_population(model.to(dev), replicate.stream, cfg.train)
        # eval_batch_size images per network, as one at a time: P times the images would outgrow the caches
        batch = max(1, cfg.train.eval_batch_size // len(masks))
        scores = evaluate_population(model, evaluator.val_x, evaluator.val_y, batch)
    seconds = (time.perf_counter() - start) / sum(real)
    records = []
    for mask, result, (acc, val_loss), keep in zip(masks, trained, scores, real):
        if not keep:
            continue
        reason = result.reason
        if reason is None and not (math.isfinite(acc) and math.isfinite(val_loss)):
            reason = f"validation accuracy {acc}, loss {val_loss}"
        ok = reason is None
        records.append({
            "sparsity": mask.sparsity,
            "params": params,
            "macs": macs,
            "status": OK if ok else FAILED,
            "fitness": acc if ok else None,
            "val_loss": val_loss if ok else None,
            "train_loss": result.train_loss if ok else None,
            "train_images": result.images,
            "batch_size": cfg.train.batch_size,
            "seconds": seconds,
            "reason": reason,
        })  # fmt: skip
    return records


def _injected_fault(seed: int, mask: Mask) -> bool:
    """Whether a test injects a fitness fault into this mask (``faults``): those take the one-by-one path."""
    try:
        from evo_sparse.foundations.faults import fitness_fault
    except ImportError:
        return False
    return fitness_fault(seed, mask.encode()) is not None
