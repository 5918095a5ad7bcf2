"""The model contract (``Architecture``) and the registry of networks a run can search.

A network takes part through an ``Architecture``. It declares its maskable *units* — output channels that are kept
or removed together (channels tied by a residual sum are one unit) — builds itself at any per-unit width, and says
for every state-dict entry which units index its dims 0 and 1, which is all compaction needs to slice a parent's
weights into a smaller dense network. Everything above this layer (sampling, compaction, fitness, final training,
reports) asks an Architecture; only the model modules name a concrete network.

Bring your own network with one call, then select it with ``model.name`` (``--model``)::

    @register("mynet")
    def mynet(depth: int, width: int) -> Architecture: ...

A config may also name a factory by import path, ``package.module:factory``, which works wherever the package imports
(Ray workers included); a name registered in a script reaches spawned worker processes only when the registration runs
at the script's top level.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models.masks import Layout, Mask, compact_state

NUM_CLASSES = 10  # CIFAR-10
INPUT_SHAPE = (3, 32, 32)
BUILTIN_MODULES = ("evo_sparse.models.wrn", "evo_sparse.models.resnet", "evo_sparse.models.vgg")


@dataclass(frozen=True)
class Unit:
    """A maskable group of channels: its name, full channel count and the layers writing into it."""

    name: str
    channels: int
    writers: tuple[str, ...]


class Architecture:
    """One network at one depth and width, as the project sees it.

    Subclasses give ``label`` (e.g. ``WRN-16-2``) and ``units`` (full width, in genome order) and implement ``build``
    and ``param_units``; ``batched`` is optional (the whole-population training path), the rest follows.
    """

    label: str = "network"
    units: tuple[Unit, ...] = ()

    def build(self, widths: dict[str, int] | None = None):
        """The network (an ``nn.Module``, logits [B, 10] for [B, 3, 32, 32]) at ``widths`` (None: full width),
        freshly initialized with torch's current RNG. Built-in networks also offer ``set_gates`` (masked full width)."""
        raise NotImplementedError

    def param_units(self) -> dict[str, tuple[str | None, str | None]]:
        """For every entry of the full-width state dict, the units indexing its dims 0 and 1 (None: not maskable)."""
        raise NotImplementedError

    def batched(self, widths: dict[str, int], size: int):
        """``size`` networks at ``widths`` trained as one (``training.population``'s contract), or None when this
        network has no batched form: then evaluations go one at a time."""
        return None

    @property
    def batches(self) -> bool:
        """Whether this network has a batched form (``batched``); without one, evaluations go one at a time."""
        return type(self).batched is not Architecture.batched

    @functools.cached_property
    def layout(self) -> Layout:
        return Layout.from_units(self.units)

    def full_widths(self) -> dict[str, int]:
        return {u.name: u.channels for u in self.units}

    def compact(self, parent: dict[str, Any], mask: Mask) -> dict[str, Any]:
        """``parent`` (full-width state dict) cut to ``mask``'s kept channels; loads into ``build(mask.widths())``."""
        return compact_state(parent, self._param_units, mask)

    def sub_network(self, parent: dict[str, Any], mask: Mask):
        """The compacted network of ``mask`` holding ``parent``'s weights (on the CPU)."""
        model = self.build(mask.widths())
        model.load_state_dict(self.compact(parent, mask))
        return model

    @functools.cached_property
    def _param_units(self) -> dict[str, tuple[str | None, str | None]]:
        return self.param_units()

    def cost(self, widths: dict[str, int] | None = None) -> tuple[int, int]:
        """(parameters, multiply-accumulates per 32x32 image) at ``widths`` (None: full width); BN included.

        Counted on the meta device from the network's convolutions and linear layers: instant, allocates nothing.
        """
        key = None if widths is None else tuple(sorted(widths.items()))
        return self._cost(key)

    @functools.lru_cache(maxsize=256)  # noqa: B019 -- architectures are few and live as long as the process
    def _cost(self, key: tuple | None) -> tuple[int, int]:
        import torch
        from torch import nn

        with torch.device("meta"):
            model = self.build(None if key is None else dict(key))
        params = sum(p.numel() for p in model.parameters())
        macs = 0

        def count(module, _inputs, output):
            nonlocal macs
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs += output.numel() * module.in_channels * kh * kw // module.groups
            elif isinstance(module, nn.Linear):
                macs += module.in_features * module.out_features

        hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():  # in eval mode: BatchNorm refuses one image on a 1x1 map in training mode
            model.eval()(torch.empty(1, *INPUT_SHAPE, device="meta"))
        for h in hooks:
            h.remove()
        return params, macs

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}: {len(self.units)} units, {self.layout.size} nodes>"


Factory = Callable[[int, int], Architecture]
_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory | None = None, *, replace: bool = False):
    """Make ``factory(depth, width) -> Architecture`` selectable as ``--model name``; usable as a decorator.

    ValueError when ``name`` is taken (pass ``replace=True`` to override) or is not a plain identifier.
    """
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model name {name!r} must be letters, digits, '-' or '_'")

    def add(f: Factory) -> Factory:
        if name in _FACTORIES and _FACTORIES[name] is not f and not replace:
            raise ValueError(f"a model named {name!r} is registered already; pass replace=True to override it")
        _FACTORIES[name] = f
        get.cache_clear()
        return f

    return add if factory is None else add(factory)


def names() -> list[str]:
    """Every registered model name, the default (wrn) first."""
    _load_builtins()
    return sorted(_FACTORIES, key=lambda n: (n != "wrn", n))


@functools.lru_cache(maxsize=32)
def get(name: str, depth: int, width: int) -> Architecture:
    """The architecture ``name`` (a registered name or ``package.module:factory``) at ``depth`` and ``width``.

    ConfigError, in one line, for an unknown name, an import that fails, or a depth/width the model refuses.
    """
    _load_builtins()
    if ":" in name:
        factory = _imported(name)
    elif name in _FACTORIES:
        factory = _FACTORIES[name]
    else:
        raise ConfigError(
            f"--model {name!r} is not a registered model; choose one of {', '.join(names())}, "
            "or give package.module:factory"
        )
    arch = factory(depth, width)
    if not isinstance(arch, Architecture):
        raise ConfigError(f"--model {name}: its factory returned {type(arch).__name__}, not an Architecture")
    return arch


def architecture(model_cfg) -> Architecture:
    """The architecture a ``ModelConfig`` names."""
    return get(model_cfg.name, model_cfg.depth, model_cfg.width)


def _imported(spec: str) -> Factory:
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--model {spec}: cannot import it ({exc}); check the module path and name") from None
    if not callable(obj):
        raise ConfigError(f"--model {spec} is not callable; give a factory (depth, width) -> Architecture")
    return obj


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)  # each registers its models on import
