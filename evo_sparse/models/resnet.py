"""The CIFAR ResNet of He et al. (2016), ResNet-20/32/44/56/110, declaring its maskable units (``--model resnet``).

Depth 6n+2: a conv3x3-BN-ReLU stem of 16k channels, three stages of n post-activation basic blocks
(conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU) at 16k, 32k and 64k channels (k = ``width``; k = 1 is the
paper's network), global average pooling and a linear layer. Where a stage changes shape the shortcut is a 1x1
conv + BN projection (the paper's option B), so that every channel of a stream is owned by a maskable layer.

Units: each stage's residual stream is one unit shared by every layer writing into its sum (stage 1's by the stem,
stages 2 and 3's by the projection), and each block's inner channels (conv1's outputs) are one unit. Any n >= 1 is
accepted, so ResNet-8 (n = 1) is available for quick checks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models.layers import Declared, GatedNetwork, bn_units, inner, stream
from evo_sparse.models.registry import NUM_CLASSES, Unit, register


class ResNet(Declared):
    """ResNet-depth at width k as an ``Architecture``; ConfigError for a depth not 6n+2 (n >= 1) or a width < 1."""

    def __init__(self, depth: int, width: int):
        self.n = blocks_per_stage(depth)
        if width < 1:
            raise ConfigError(f"--width for --model resnet must be at least 1, not {width}")
        self.depth, self.width = depth, width
        self.units = units(depth, width)
        self.label = f"ResNet-{depth}" if width == 1 else f"ResNet-{depth}x{width}"

    network = property(lambda self: CifarResNet)


def blocks_per_stage(depth: int) -> int:
    """n for ResNet-depth: depth = 6n + 2 with n >= 1; ConfigError otherwise."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"--depth for --model resnet must be 6n+2 (8, 14, 20, 32, 44, 56, 110), not {depth}")
    return (depth - 2) // 6


def units(depth: int, width: int) -> tuple[Unit, ...]:
    """The maskable units of ResNet-depth at width k, full width, in genome order: per stage, the stream then the
    inner units of its blocks. Writers are the layers (convs, each followed by its BN) that write into the unit."""
    n = blocks_per_stage(depth)
    out: list[Unit] = []
    for s in (1, 2, 3):
        channels = 16 * width * 2 ** (s - 1)
        first = "stem" if s == 1 else f"stages.{s - 1}.0.shortcut"
        out.append(Unit(stream(s), channels, (first, *(f"stages.{s - 1}.{b}.conv2" for b in range(n)))))
        out += [Unit(inner(s, b), channels, (f"stages.{s - 1}.{b}.conv1",)) for b in range(n)]
    return tuple(out)


class Block(nn.Module):
    """Post-activation basic block: ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x)), shortcut identity or
    1x1 conv + BN; its output and its inner activation are gated where they are produced."""

    def __init__(self, c_in: int, c_inner: int, c_out: int, stride: int, project: bool, units: tuple[str, str, str]):
        super().__init__()
        self.units = units  # (input stream, inner, output stream)
        self.conv1 = nn.Conv2d(c_in, c_inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_inner)
        self.conv2 = nn.Conv2d(c_inner, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if project else None
        self.shortcut_bn = nn.BatchNorm2d(c_out) if project else None

    def forward(self, x: torch.Tensor, gate: Callable[[torch.Tensor, str], torch.Tensor]) -> torch.Tensor:
        h = gate(F.relu(self.bn1(self.conv1(x))), self.units[1])
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return gate(F.relu(self.bn2(self.conv2(h)) + skip), self.units[2])


class CifarResNet(GatedNetwork):
    """ResNet-depth at width k for [B, 3, 32, 32] inputs, logits [B, 10]; ``widths`` maps unit name to the channels
    actually built (None: full width). ValueError for widths that miss a unit or leave 1..C."""

    def __init__(self, depth: int, width: int, widths: dict[str, int] | None = None):
        super().__init__()
        self.depth, self.width = depth, width
        self.units = units(depth, width)
        full = {u.name: u.channels for u in self.units}
        self.widths = dict(full if widths is None else widths)
        if set(self.widths) != set(full) or any(not 1 <= self.widths[k] <= full[k] for k in full):
            raise ValueError(f"widths must give 1..C channels for each of {sorted(full)}")
        w, n = self.widths, blocks_per_stage(depth)
        self.stem = nn.Conv2d(3, w[stream(1)], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w[stream(1)])
        self.stages = nn.ModuleList()
        prev = stream(1)
        for s in (1, 2, 3):
            blocks = nn.ModuleList()
            for b in range(n):
                c_in = prev if b == 0 else stream(s)
                stride = 2 if (b == 0 and s > 1) else 1
                units_ = (c_in, inner(s, b), stream(s))
                blocks.append(Block(w[c_in], w[inner(s, b)], w[stream(s)], stride, c_in != stream(s), units_))
            self.stages.append(blocks)
            prev = stream(s)
        self.fc = nn.Linear(w[stream(3)], NUM_CLASSES)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._gate(F.relu(self.stem_bn(self.stem(x))), stream(1))
        for blocks in self.stages:
            for block in blocks:
                x = block(x, self._gate)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def param_units(self) -> dict[str, tuple[str | None, str | None]]:
        """For every state-dict entry, the units indexing its dim 0 and dim 1 (None: not maskable)."""
        out: dict[str, tuple[str | None, str | None]] = {"stem.weight": (stream(1), None)}
        out.update(bn_units("stem_bn", stream(1)))
        for s, blocks in enumerate(self.stages, start=1):
            for b, block in enumerate(blocks):
                u_in, u_inner, u_out = block.units
                p = f"stages.{s - 1}.{b}."
                out[p + "conv1.weight"] = (u_inner, u_in)
                out[p + "conv2.weight"] = (u_out, u_inner)
                out.update(bn_units(p + "bn1", u_inner) | bn_units(p + "bn2", u_out))
                if block.shortcut is not None:
                    out[p + "shortcut.weight"] = (u_out, u_in)
                    out.update(bn_units(p + "shortcut_bn", u_out))
        out["fc.weight"] = (None, stream(3))
        out["fc.bias"] = (None, None)
        return out


register("resnet", ResNet)
