"""P compacted WRNs of equal widths as one network, for whole-population training (``training.population``).

The individuals are stacked along channels (individual-major: channel ``i * C + c`` is channel ``c`` of individual
``i``): each convolution becomes one grouped convolution (``groups=P``; the stem, which reads the shared images, an
ordinary one with ``P * C`` outputs), each BatchNorm one over ``P * C`` channels, the classifier a batched matmul.
No operation mixes individuals, so each keeps its own weights, BatchNorm statistics and optimizer state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.models import wrn
from evo_sparse.models.registry import NUM_CLASSES

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
        self.fc = BatchedLinear(p, w[wrn.stream(3)], NUM_CLASSES)
        with torch.device("meta"):
            self._single = {k: v.shape for k, v in wrn.WideResNet(depth, width, widths).state_dict().items()}

    def load_members(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Load one single-network state dict (of ``wrn.WideResNet`` at ``widths``) per individual, in order."""
        own = self.state_dict()
        stack = {
            k: torch.stack([s[k] for s in states]).view(v.shape) for k, v in own.items() if not k.endswith(_SHARED)
        }
        self.load_state_dict(states[0] | stack)

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
