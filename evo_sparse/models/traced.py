"""Any ``nn.Module`` as an ``Architecture``: its units traced by Torch-Pruning's dependency graph, not declared.

``traced(make)`` turns ``make(depth, width) -> nn.Module`` (the full network: logits [B, 10] for [B, 3, 32, 32])
into a factory for ``registry.register``; then ``--model mynet`` searches its node masks like a built-in network's::

    from evo_sparse.models.registry import register
    from evo_sparse.models.traced import traced

    register("mynet", traced(lambda depth, width: MyNet()))

``make`` must build a new network at each call, on torch's default device (it is called on the meta device too).
``Traced(make)`` with a no-argument ``make`` is the same for one network. It needs Torch-Pruning
(``pip install 'evo-sparse[prune]'``), which traces the network on the meta device (milliseconds, once per build):

- **units** are the channel groups it couples when a convolution's output channels are pruned (channels tied by a
  residual sum are one group), in module order of their first writer, each named after that writer's module path.
  Groups that reach the network's output (the logits) and single-channel groups are not maskable.
- **param_units** is found by pruning every unit's even channels from a copy of each layer it touches: an entry whose
  dim 0 or 1 shrinks to the odd channels is indexed by the unit there. Whatever Torch-Pruning does that a slice of
  dims 0 and 1 cannot say (a flatten into a linear layer, a concatenation, a grouped convolution) stops the
  construction with a ConfigError.
- **build(widths)** is a fresh full network (``make``, torch's current RNG and device) physically pruned by
  Torch-Pruning to the first ``widths[u]`` channels of every unit; ``sub_network`` and ``cost`` follow from the base
  class, so a sub-network is exactly what Torch-Pruning's pruning of the parent to the mask's kept channels gives.

That equals the masked full network (removed channels contributing nothing) for layers that treat each channel on
its own (BatchNorm, ReLU, pooling, residual sums), as in the built-in networks; not for GroupNorm or LayerNorm over
channels, whose statistics change when channels go.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from torch import nn

from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models.registry import INPUT_SHAPE, NUM_CLASSES, Architecture, Unit

INSTALL = "pip install 'evo-sparse[prune]'"


def torch_pruning():
    """The ``torch_pruning`` module; ConfigError naming the install command when it is missing."""
    try:
        import torch_pruning
    except ImportError:
        raise ConfigError(f"a traced model needs Torch-Pruning, which is not installed; run {INSTALL}") from None
    return torch_pruning


def traced(make: Callable[[int, int], nn.Module], *, label: str | None = None) -> Callable[[int, int], Traced]:
    """A ``(depth, width) -> Traced`` factory for ``registry.register`` from ``make(depth, width) -> nn.Module``
    (ignore the two numbers when the network has no such knobs). Labels read ``<label>-<depth>-<width>``, the label
    defaulting to ``make``'s name."""
    base = label or getattr(make, "__name__", "").strip("<>") or "traced"

    def factory(depth: int, width: int) -> Traced:
        return Traced(functools.partial(make, depth, width), label=f"{base}-{depth}-{width}")

    return factory


class Traced(Architecture):
    """The network ``make()`` builds, with units, ``param_units`` and ``build(widths)`` from Torch-Pruning.

    ConfigError, in one line, when Torch-Pruning is missing, ``make()`` gives no ``nn.Module`` with logits [B, 10],
    or a unit reaches a layer in a way compaction cannot slice (see the module's docstring).
    """

    def __init__(self, make: Callable[[], nn.Module], *, label: str = "network"):
        self._make, self.label = make, label
        model, dg = _trace(make, label)
        groups = _maskable_groups(model, dg)
        self.units = tuple(Unit(writers[0], channels, writers) for writers, channels, _ in groups)
        self._roots = {writers[0]: root for writers, _, root in groups}  # the convolution each unit is pruned from
        self._probed = _probe(model, dg, self.units, self._roots, label)
        self._check(model.state_dict(), label)

    def build(self, widths: dict[str, int] | None = None) -> nn.Module:
        """``make()`` (full width), or ``make()`` pruned to the first ``widths[u]`` channels of every unit u."""
        model = self._make()
        if widths is None:
            return model
        full = self.full_widths()
        if set(widths) != set(full) or any(not 1 <= widths[k] <= full[k] for k in full):
            raise ValueError(f"widths must give 1..C channels for each of {sorted(full)}")
        skeleton, dg = _trace(self._make, self.label)
        if skeleton is model:
            raise ConfigError(
                f"{self.label}: make() returned the same network twice; it must build a new one each call"
            )
        for unit in self.units:
            removed = list(range(widths[unit.name], unit.channels))
            if not removed:
                continue
            root = skeleton.get_submodule(self._roots[unit.name])
            group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, removed)
            _mirror(group, skeleton, model)
            group.prune()  # the skeleton follows, so later groups map their indices through its current shapes
        return model

    def param_units(self) -> dict[str, tuple[str | None, str | None]]:
        return dict(self._probed)

    def _check(self, full: dict[str, torch.Tensor], label: str) -> None:
        """Build at the probe's widths on the meta device: it must run, give [1, 10] and have the shapes that
        compaction's slices of ``full`` (the full-width state) give, so a compacted state always loads."""
        widths = {u.name: u.channels // 2 for u in self.units}  # the odd channels the probe kept
        with torch.device("meta"):
            small = self.build(widths).eval()
            with torch.no_grad():
                out = small(torch.empty(1, *INPUT_SHAPE))
        if tuple(out.shape) != (1, NUM_CLASSES):
            raise ConfigError(f"{label}: pruned by Torch-Pruning it gives logits {tuple(out.shape)}, not (1, 10)")
        for key, t in small.state_dict().items():
            shape = [widths[u] if u else n for u, n in zip((*self._probed[key], None, None), full[key].shape)]
            if list(t.shape) != shape:
                raise ConfigError(f"{label}: Torch-Pruning gives {key} the shape {tuple(t.shape)}, slicing {shape}")


def _trace(make: Callable[[], nn.Module], label: str):
    """(the network on the meta device, its dependency graph); the global RNG is left as it was."""
    tp = torch_pruning()
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = make()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{label}: make() returned {type(model).__name__}, not an nn.Module")
        if any(t.device.type != "meta" for t in model.state_dict().values()):
            raise ConfigError(f"{label}: make() must build a new network, on torch's default device, at each call")
        x = torch.empty(1, *INPUT_SHAPE)
        with torch.no_grad():
            out = model.eval()(x)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, NUM_CLASSES):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{label}: the network must map [B, 3, 32, 32] to logits [B, 10], not to {shape}")
        try:
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
        except Exception as exc:  # an operation its tracer does not follow (e.g. a channel shuffle)
            raise ConfigError(f"{label}: Torch-Pruning cannot trace it ({type(exc).__name__}: {exc})") from exc
    return model, dg


def _maskable_groups(model: nn.Module, dg) -> list[tuple[tuple[str, ...], int, str]]:
    """(writers in module order, channels, root convolution) of every group rooted at a convolution's output
    channels that does not reach the logits and has two channels or more, ordered by their first writer."""
    tp = torch_pruning()
    order = {m: (i, name) for i, (name, m) in enumerate(model.named_modules())}
    out = []
    for group in dg.get_all_groups(root_module_types=[nn.Conv2d]):
        if any(dep.target.type == tp.ops.OPTYPE.OUTPUT for dep, _ in group):
            continue  # the logits are never masked
        writers = sorted(
            order[dep.target.module]
            for dep, _ in group
            if isinstance(dep.target.module, (nn.Conv2d, nn.Linear)) and dg.is_out_channel_pruning_fn(dep.handler)
        )
        channels = len(group[0].idxs)
        if channels >= 2:
            out.append((writers, channels, order[group[0].dep.target.module][1]))
    out.sort(key=lambda g: g[0][0])
    return [(tuple(name for _, name in writers), channels, root) for writers, channels, root in out]


def _probe(model: nn.Module, dg, units, roots: dict[str, str], label: str) -> dict[str, tuple[str | None, str | None]]:
    """``param_units`` of ``model``: which unit each state entry's dims 0 and 1 follow when Torch-Pruning prunes."""
    names = {m: n for n, m in model.named_modules()} | {p: n for n, p in model.named_parameters()}
    found: dict[tuple[str, int], str] = {}
    for unit in units:
        removed, kept = list(range(0, unit.channels, 2)), torch.arange(1, unit.channels, 2)
        root = model.get_submodule(roots[unit.name])
        for dep, idxs in dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, removed):
            target = dep.target.module
            if target not in names:
                continue  # an operation without weights (a sum, a reshape, the output)
            where = names[target]
            if sorted(idxs) != removed:
                raise ConfigError(
                    f"{label}: unit {unit.name} reaches {where or 'the network'} through a reshape or concatenation "
                    f"({len(idxs)} indices for {len(removed)} channels), which slicing dims 0 and 1 cannot follow"
                )
            before, after = _pruned_copy(dep, idxs)
            prefix = where + "." if where and isinstance(target, nn.Module) else ""
            for key, old in before.items():
                full = prefix + key if prefix else (key or where)
                dims = _sliced_dims(old, after.get(key), kept, unit.channels)
                if dims is None:
                    raise ConfigError(
                        f"{label}: Torch-Pruning cuts {full} of unit {unit.name} in a way that slicing dims 0 and 1 "
                        f"cannot reproduce (grouped convolutions, concatenations and reshaped inputs are not supported)"
                    )
                for d in dims:
                    if found.setdefault((full, d), unit.name) != unit.name:
                        raise ConfigError(f"{label}: dim {d} of {full} belongs to two units, {found[full, d]} and "
                                          f"{unit.name}")  # fmt: skip
    pu = {key: [None, None] for key in model.state_dict()}
    for (key, d), unit_name in found.items():
        pu[key][d] = unit_name
    return {key: (a, b) for key, (a, b) in pu.items()}


def _sliced_dims(old: torch.Tensor, new: torch.Tensor | None, kept: torch.Tensor, channels: int) -> list[int] | None:
    """The dims (0 or 1, of ``channels`` entries) by which ``new`` is ``old`` sliced to ``kept``; None when ``new`` is
    anything else."""
    if new is None or new.dim() != old.dim():
        return None
    dims = [d for d in range(old.dim()) if new.shape[d] != old.shape[d]]
    if any(d > 1 or old.shape[d] != channels for d in dims):
        return None
    expected = old
    for d in dims:
        expected = expected.index_select(d, kept)
    return dims if torch.equal(new, expected) else None


def _pruned_copy(dep, idxs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state before, state after) of a CPU copy of ``dep``'s layer, filled with distinct values, pruned by its
    handler at ``idxs``; keys relative to the layer ('' for a bare parameter)."""
    target = dep.target.module
    if isinstance(target, nn.Parameter):
        layer = nn.Parameter(torch.empty_like(target, device="cpu"), requires_grad=target.requires_grad)
        state = {"": layer.data}
    else:
        layer = copy.deepcopy(target).to_empty(device="cpu")
        state = layer.state_dict()
    with torch.no_grad():
        for t in state.values():
            t.copy_(torch.arange(t.numel()).view_as(t))
    before = {k: v.clone() for k, v in state.items()}
    result = _prune(dep, layer, idxs)
    after = {"": result.data} if isinstance(target, nn.Parameter) else layer.state_dict()
    return before, after


def _prune(dep, layer, idxs):
    """Apply ``dep``'s handler to ``layer`` (which need not be the traced one), as ``Dependency.__call__`` does."""
    dep.handler.__self__.pruning_dim = dep.target.pruning_dim
    return dep.handler(layer, list(idxs))


def _mirror(group, skeleton: nn.Module, model: nn.Module) -> None:
    """Prune ``model``'s layers as ``group`` prunes their counterparts (same module path) in ``skeleton``."""
    modules = {m: n for n, m in skeleton.named_modules()}
    params = {p: n for n, p in skeleton.named_parameters()}
    for dep, idxs in group:
        target = dep.target.module
        if isinstance(target, nn.Parameter) and target in params:
            owner, _, attr = params[target].rpartition(".")
            module = model.get_submodule(owner)
            setattr(module, attr, _prune(dep, getattr(module, attr), idxs))
        elif isinstance(target, nn.Module) and target in modules:
            _prune(dep, model.get_submodule(modules[target]), idxs)
