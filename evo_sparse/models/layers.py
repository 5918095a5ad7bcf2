"""What the built-in networks share: their Architecture (``Declared``), channel gates, the initialization, the names
of residual-stage units, and the unit map of a BatchNorm layer."""

from __future__ import annotations

import torch
from torch import nn

from evo_sparse.models.registry import Architecture


class GatedNetwork(nn.Module):
    """Base of a network that can run masked at full width: ``set_gates`` stores 0/1 vectors per unit and the
    subclass's forward passes each unit's activation through ``_gate`` where every reader sees it."""

    def __init__(self):
        super().__init__()
        self._gates: dict[str, torch.Tensor] = {}

    def set_gates(self, gates: dict[str, torch.Tensor] | None) -> None:
        """Multiply every activation of unit u by ``gates[u]`` (a 0/1 vector, e.g. ``Mask.gates``); None removes the
        gates. A gated channel then adds nothing to the output and receives no gradient: the network computes what its
        compacted form computes, in training mode too (each subclass says where it gates)."""
        self._gates = {k: v.view(1, -1, 1, 1) for k, v in (gates or {}).items()}

    def _gate(self, x: torch.Tensor, unit: str) -> torch.Tensor:
        g = self._gates.get(unit)
        return x if g is None else x * g.to(x.dtype)

    def reset_parameters(self) -> None:
        """Kaiming-normal convs (fan out, ReLU), BN weight 1 and bias 0, torch's default linear (the WRN and ResNet
        papers' initialization)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()


def bn_units(prefix: str, unit: str) -> dict[str, tuple[str | None, str | None]]:
    """``param_units`` entries of the BatchNorm layer ``prefix`` over ``unit``'s channels."""
    entries = {f"{prefix}.{k}": (unit, None) for k in ("weight", "bias", "running_mean", "running_var")}
    return entries | {f"{prefix}.num_batches_tracked": (None, None)}


class Declared(Architecture):
    """An Architecture whose network class (``network``: built from ``(depth, width, widths)``) lists its own
    ``param_units``; subclasses set ``depth``, ``width``, ``units`` and ``label``."""

    network: type

    def build(self, widths: dict[str, int] | None = None):
        return self.network(self.depth, self.width, widths)

    def param_units(self) -> dict[str, tuple[str | None, str | None]]:
        with torch.device("meta"):
            return self.network(self.depth, self.width).param_units()


def stream(stage: int) -> str:
    """The unit of a residual stage's stream (the channels every writer into its sum shares)."""
    return f"stage{stage}"


def inner(stage: int, block: int) -> str:
    """The unit of a residual block's inner channels."""
    return f"stage{stage}.block{block}.inner"
