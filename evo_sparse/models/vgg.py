"""CIFAR VGG with batch norm (Simonyan & Zisserman, 2015; the common CIFAR form), declaring its units (``--model vgg``).

VGG-11/13/16/19: conv3x3-BN-ReLU layers of 64k..512k channels (k = ``width``), a 2x2 max-pool after each of the five
groups (32x32 down to 1x1), global average pooling and one linear layer to the 10 classes. There are no residual
sums, so every conv's output channels are a unit of their own: ``conv0``, ``conv1``, ... in network order. The depth
is the ImageNet network's (its convs plus three linear layers), as CIFAR papers name it: VGG-16 has 13 convs here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models.layers import Declared, GatedNetwork
from evo_sparse.models.registry import NUM_CLASSES, Unit, register

POOL = "M"
CONFIGS: dict[int, tuple[int | str, ...]] = {  # channels at width 1; POOL is a 2x2 max-pool
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    19: (64, 64, POOL, 128, 128, POOL, *(256,) * 4, POOL, *(512,) * 4, POOL, *(512,) * 4, POOL),
}


class VGG(Declared):
    """VGG-depth at width k as an ``Architecture``; ConfigError for a depth not in 11, 13, 16, 19 or a width < 1."""

    def __init__(self, depth: int, width: int):
        config(depth)
        if width < 1:
            raise ConfigError(f"--width for --model vgg must be at least 1, not {width}")
        self.depth, self.width = depth, width
        self.units = units(depth, width)
        self.label = f"VGG-{depth}" if width == 1 else f"VGG-{depth}x{width}"

    network = property(lambda self: CifarVGG)


def config(depth: int) -> tuple[int | str, ...]:
    """The layer list of VGG-depth at width 1; ConfigError for a depth without one."""
    if depth not in CONFIGS:
        raise ConfigError(f"--depth for --model vgg must be one of {', '.join(map(str, CONFIGS))}, not {depth}")
    return CONFIGS[depth]


def conv(i: int) -> str:
    return f"conv{i}"


def units(depth: int, width: int) -> tuple[Unit, ...]:
    """The maskable units of VGG-depth at width k, full width: one per conv, in network order."""
    channels = [c * width for c in config(depth) if c != POOL]
    return tuple(Unit(conv(i), c, (f"layers.{i}.conv",)) for i, c in enumerate(channels))


class ConvBN(nn.Module):
    """conv3x3 (no bias) followed by BN; the ReLU, gate and pool are applied by the network."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class CifarVGG(GatedNetwork):
    """VGG-depth at width k for [B, 3, 32, 32] inputs, logits [B, 10]; ``widths`` maps unit name to the channels
    actually built (None: full width). ValueError for widths that miss a unit or leave 1..C."""

    def __init__(self, depth: int, width: int, widths: dict[str, int] | None = None):
        super().__init__()
        self.depth, self.width = depth, width
        self.units = units(depth, width)
        full = {u.name: u.channels for u in self.units}
        self.widths = dict(full if widths is None else widths)
        if set(self.widths) != set(full) or any(not 1 <= self.widths[k] <= full[k] for k in full):
            raise ValueError(f"widths must give 1..C channels for each of {sorted(full)}")
        self.layers = nn.ModuleList()
        pool_after = []
        c_in = 3
        for item in config(depth):
            if item == POOL:
                pool_after[-1] = True
                continue
            c_out = self.widths[conv(len(self.layers))]
            self.layers.append(ConvBN(c_in, c_out))
            pool_after.append(False)
            c_in = c_out
        self.pool_after = tuple(pool_after)
        self.fc = nn.Linear(c_in, NUM_CLASSES)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (layer, pool) in enumerate(zip(self.layers, self.pool_after, strict=True)):
            x = F.relu(layer(x))
            x = self._gate(x, conv(i))
            if pool:
                x = F.max_pool2d(x, 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def param_units(self) -> dict[str, tuple[str | None, str | None]]:
        """For every state-dict entry, the units indexing its dim 0 and dim 1 (None: not maskable)."""
        out: dict[str, tuple[str | None, str | None]] = {}
        previous = None  # the input image is not maskable
        for i in range(len(self.layers)):
            out[f"layers.{i}.conv.weight"] = (conv(i), previous)
            out.update(
                {f"layers.{i}.bn.{k}": (conv(i), None) for k in ("weight", "bias", "running_mean", "running_var")}
            )
            out[f"layers.{i}.bn.num_batches_tracked"] = (None, None)
            previous = conv(i)
        out["fc.weight"] = (None, previous)
        out["fc.bias"] = (None, None)
        return out


register("vgg", VGG)
