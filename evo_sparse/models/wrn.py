"""Wide ResNet for CIFAR (Zagoruyko & Komodakis, 2016) that declares its maskable units.

A *unit* is a group of output channels that must be kept or removed together: the stem, each stage's residual
stream (every conv that writes into the stream's sum shares its channels) and each block's inner channels.
The network can be built at any per-unit width (``widths``), which is how a compacted sub-network is made, and can
gate channels with 0/1 vectors (``set_gates``), which is how a masked full-width network is run. It knows nothing of
how masks are chosen (see ``masks``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models.layers import Declared, GatedNetwork, bn_units, inner, stream
from evo_sparse.models.registry import NUM_CLASSES, Unit, register

STEM = "stem"


class WRN(Declared):
    """WRN-depth-width as an ``Architecture``: the default network (``--model wrn``)."""

    def __init__(self, depth: int, width: int):
        if width < 1:
            raise ConfigError(f"--width must be at least 1 for --model wrn, not {width}")
        self.depth, self.width = depth, width
        self.units = units(depth, width)
        self.label = f"WRN-{depth}-{width}"

    network = property(lambda self: WideResNet)

    def batched(self, widths: dict[str, int], size: int):
        from evo_sparse.models.wrn_batched import PopulationWRN

        return PopulationWRN(self.depth, self.width, widths, size)


register("wrn", WRN)


def blocks_per_stage(depth: int) -> int:
    """n for WRN-depth: depth = 6n + 4; ConfigError otherwise."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"--depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), not {depth}")
    return (depth - 4) // 6


def units(depth: int, width: int) -> tuple[Unit, ...]:
    """The maskable units of WRN-depth-width at full width, in a fixed order (the genome order)."""
    n = blocks_per_stage(depth)
    stem_unit = stem_unit_name(width)
    out: list[Unit] = []
    if stem_unit == STEM:
        out.append(Unit(STEM, 16, ("stem",)))
    for s in (1, 2, 3):
        writers = [f"stages.{s - 1}.{b}.conv2" for b in range(n)]
        writers.insert(0, "stem" if stream(s) == stem_unit else f"stages.{s - 1}.0.shortcut")
        out.append(Unit(stream(s), 16 * width * 2 ** (s - 1), tuple(writers)))
        out += [Unit(inner(s, b), 16 * width * 2 ** (s - 1), (f"stages.{s - 1}.{b}.conv1",)) for b in range(n)]
    return tuple(out)


def stem_unit_name(width: int) -> str:
    """The stem writes into stage 1's stream when they have the same width (k = 1: identity shortcut)."""
    return stream(1) if width == 1 else STEM


class Block(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_inner: int, c_out: int, stride: int, project: bool, units: tuple[str, str, str]):
        super().__init__()
        self.units = units  # (input stream, inner, output stream)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_inner, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_inner)
        self.conv2 = nn.Conv2d(c_inner, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if project else None

    def forward(self, x: torch.Tensor, gate) -> torch.Tensor:
        a = gate(F.relu(self.bn1(x)), self.units[0])
        h = self.conv2(gate(F.relu(self.bn2(self.conv1(a))), self.units[1]))
        return h + (self.shortcut(a) if self.shortcut is not None else x)


class WideResNet(GatedNetwork):
    """WRN-depth-width for 32x32 inputs; ``widths`` maps unit name to the channels actually built."""

    def __init__(self, depth: int, width: int, widths: dict[str, int] | None = None):
        super().__init__()
        self.depth, self.width = depth, width
        self.units = units(depth, width)
        full = {u.name: u.channels for u in self.units}
        self.widths = dict(full if widths is None else widths)
        if set(self.widths) != set(full) or any(not 1 <= self.widths[k] <= full[k] for k in full):
            raise ValueError(f"widths must give 1..C channels for each of {sorted(full)}")
        w, n = self.widths, blocks_per_stage(depth)
        prev = stem_unit_name(width)
        self.stem = nn.Conv2d(3, w[prev], 3, 1, 1, bias=False)
        self.stages = nn.ModuleList()
        for s in (1, 2, 3):
            blocks = nn.ModuleList()
            for b in range(n):
                c_in = prev if b == 0 else stream(s)
                blocks.append(
                    Block(
                        w[c_in],
                        w[inner(s, b)],
                        w[stream(s)],
                        2 if (b == 0 and s > 1) else 1,
                        project=c_in != stream(s),
                        units=(c_in, inner(s, b), stream(s)),
                    )
                )
            self.stages.append(blocks)
            prev = stream(s)
        self.bn = nn.BatchNorm2d(w[stream(3)])
        self.fc = nn.Linear(w[stream(3)], NUM_CLASSES)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for blocks in self.stages:
            for block in blocks:
                x = block(x, self._gate)
        x = self._gate(F.relu(self.bn(x)), stream(3))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def param_units(self) -> dict[str, tuple[str | None, str | None]]:
        """For every state-dict entry, the units indexing its dim 0 and dim 1 (None: not maskable).

        This is all that compaction needs to slice a full-width state into a narrower network.
        """
        out: dict[str, tuple[str | None, str | None]] = {"stem.weight": (stem_unit_name(self.width), None)}
        for s, blocks in enumerate(self.stages, start=1):
            for b, block in enumerate(blocks):
                u_in, u_inner, u_out = block.units
                p = f"stages.{s - 1}.{b}."
                out.update(bn_units(p + "bn1", u_in) | bn_units(p + "bn2", u_inner))
                out[p + "conv1.weight"] = (u_inner, u_in)
                out[p + "conv2.weight"] = (u_out, u_inner)
                if block.shortcut is not None:
                    out[p + "shortcut.weight"] = (u_out, u_in)
        out.update(bn_units("bn", stream(3)))
        out["fc.weight"] = (None, stream(3))
        out["fc.bias"] = (None, None)
        return out
