"""Traced models (``models.traced``): Torch-Pruning's dependency graph finds the units and ``param_units`` the built-in
networks declare by hand, and a network nobody declared compacts exactly and runs a search."""

from __future__ import annotations

import random
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models import registry
from evo_sparse.models.masks import Mask, sample
from evo_sparse.models.traced import Traced, traced

DECLARED = (("wrn", 16, 2), ("wrn", 10, 1), ("resnet", 20, 1), ("vgg", 11, 1))


@pytest.fixture
def tp():
    return pytest.importorskip("torch_pruning")


class Tiny(nn.Module):
    """Three convolutions, the second summed with the first's output (one unit of 8k), the third on its own (16k)."""

    def __init__(self, width: int = 1):
        super().__init__()
        c, d = 8 * width, 16 * width
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = nn.Conv2d(c, d, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(d)
        self.fc = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(x)))
        b = F.relu(self.bn2(self.conv2(a)) + a)
        c = F.relu(self.bn3(self.conv3(b)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(c, 1), 1))


def tiny(depth: int, width: int) -> nn.Module:
    return Tiny(width)


def random_mask(arch: registry.Architecture, sparsity: float, seed: int = 0) -> Mask:
    return Mask(arch.layout, tuple(sample(arch.layout, sparsity, rng=random.Random(seed))))


def randomized(net: nn.Module) -> nn.Module:
    """``net`` with random BN statistics and affine terms, so every channel differs from its neighbours, in float64
    (drawn in float32 first: ``sub_network`` builds in float32, and ``.double()`` comes after the load)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return net.double()


def by_writers(arch: registry.Architecture) -> dict[frozenset, str]:
    return {frozenset(u.writers): u.name for u in arch.units}


# --- the traced contract equals the declared one ----------------------------------------------------------------------


@pytest.mark.parametrize("model", DECLARED, ids=lambda m: f"{m[0]}{m[1]}x{m[2]}")
def test_traced_units_and_param_units_equal_the_declared_ones(tp, model):
    declared = registry.get(*model)
    found = Traced(declared.build, label=declared.label)
    assert sorted((u.channels, sorted(u.writers)) for u in found.units) == sorted(
        (u.channels, sorted(u.writers)) for u in declared.units
    )
    rename = {u.name: by_writers(declared)[frozenset(u.writers)] for u in found.units}
    renamed = {key: tuple(rename.get(u) for u in dims) for key, dims in found.param_units().items()}
    assert renamed == declared.param_units()
    assert found.cost() == declared.cost()


def test_traced_compaction_equals_the_gated_network(tp):
    # The declared ResNet-20 gates its removed channels; the traced one compacts with Torch-Pruning: same function.
    declared = registry.get("resnet", 20, 1)
    found = Traced(declared.build, label=declared.label)
    mask = random_mask(found, 0.6)
    rename = {u.name: by_writers(declared)[frozenset(u.writers)] for u in found.units}
    gated = Mask.from_units(declared.layout, {rename[u]: kept for u, kept in mask.kept().items()})
    full = randomized(declared.build()).eval()
    small = found.sub_network(full.state_dict(), mask).double().eval()
    assert found.cost(mask.widths()) == declared.cost(gated.widths())
    full.set_gates(gated.gates(next(full.parameters())))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), full(x), atol=1e-10, rtol=1e-10)


# --- a network nobody declared ----------------------------------------------------------------------------------------


def test_a_user_network_gets_its_units_by_tracing(tp):
    arch = traced(tiny)(10, 1)
    assert arch.label == "tiny-10-1"
    assert [(u.name, u.channels, u.writers) for u in arch.units] == [
        ("conv1", 8, ("conv1", "conv2")),  # tied by the residual sum
        ("conv3", 16, ("conv3",)),
    ]
    pu = arch.param_units()
    assert pu["conv2.weight"] == ("conv1", "conv1") and pu["conv2.bias"] == ("conv1", None)
    assert pu["conv3.weight"] == ("conv3", "conv1") and pu["bn3.running_var"] == ("conv3", None)
    assert pu["fc.weight"] == (None, "conv3") and pu["fc.bias"] == (None, None)
    assert pu["bn1.num_batches_tracked"] == (None, None)
    small = arch.build({"conv1": 3, "conv3": 5})
    assert small.conv2.weight.shape == (3, 3, 3, 3) and small.fc.weight.shape == (10, 5)
    assert arch.cost() == (
        sum(p.numel() for p in Tiny().parameters()),
        32 * 32 * (27 * 8 + 72 * 8) + 16 * 16 * 72 * 16 + 160,
    )


def test_channels_that_reach_the_logits_are_not_a_unit(tp):
    def conv_head() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    arch = Traced(conv_head, label="all-conv")
    assert [(u.name, u.channels, u.writers) for u in arch.units] == [("0", 8, ("0",))]
    assert arch.param_units() == {"0.weight": ("0", None), "0.bias": ("0", None), "2.weight": (None, "0"),
                                  "2.bias": (None, None)}  # fmt: skip


@pytest.mark.parametrize("train_mode", (False, True), ids=("eval", "train"))
def test_compacted_equals_torch_prunings_own_pruning(tp, train_mode):
    arch = traced(tiny)(10, 2)
    mask = random_mask(arch, 0.5, seed=3)
    parent = randomized(Tiny(2))
    small = arch.sub_network(parent.state_dict(), mask).double()
    dg = tp.DependencyGraph().build_dependency(parent, example_inputs=torch.randn(1, 3, 32, 32, dtype=torch.float64))
    for unit, kept in mask.kept().items():
        removed = sorted(set(range(arch.full_widths()[unit])) - set(kept))
        dg.get_pruning_group(parent.get_submodule(unit), tp.prune_conv_out_channels, removed).prune()
    assert small.state_dict().keys() == parent.state_dict().keys()
    for key, t in small.state_dict().items():
        torch.testing.assert_close(t, parent.state_dict()[key], atol=0, rtol=0, msg=key)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    small.train(train_mode)
    parent.train(train_mode)
    with torch.no_grad():
        torch.testing.assert_close(small(x), parent(x), atol=1e-12, rtol=1e-12)


def test_compacted_equals_the_network_with_removed_channels_zeroed(tp):
    # Tiny treats channels one by one, so zeroing a removed channel's writers and BN affine terms removes it.
    arch = traced(tiny)(10, 1)
    mask = random_mask(arch, 0.5, seed=5)
    full = randomized(Tiny(1)).eval()
    small = arch.sub_network(full.state_dict(), mask).double().eval()
    kept = mask.kept()
    with torch.no_grad():
        for name, p in full.named_parameters():
            unit = arch.param_units()[name][0]
            if unit is not None:
                gone = torch.tensor(sorted(set(range(p.shape[0])) - set(kept[unit])))
                p.index_fill_(0, gone, 0.0)
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
        torch.testing.assert_close(small(x), full(x), atol=1e-12, rtol=1e-12)


def test_tracing_leaves_the_rng_alone_and_build_draws_a_fresh_network(tp):
    torch.manual_seed(7)
    arch = traced(tiny)(10, 1)
    after = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(1), after)
    torch.manual_seed(1)
    first = arch.build()
    torch.manual_seed(1)
    cut = arch.build({"conv1": 8, "conv3": 4})  # widths cut a fresh full-width network: its first channels
    torch.testing.assert_close(cut.conv3.weight, first.conv3.weight[:4], atol=0, rtol=0)


def test_a_traced_network_runs_a_smoke_search(tp, tmp_path, monkeypatch):
    from evo_sparse.foundations.presets import preset
    from evo_sparse.runs.run import execute, summarize

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # the name is gone after this test
    registry.register("traced-tiny", traced(tiny))
    cfg = preset("smoke").updated({"model.name": "traced-tiny", "runs_dir": str(tmp_path), "backend": "local"})
    s = summarize(execute(cfg, log=lambda _: None, show_progress=False))
    assert s["finished"] and s["failed_evaluations"] == 0
    assert s["model"]["label"] == "tiny-10-1" and not s["model"]["batched"]
    assert s["best"]["fitness"] > 0.1  # synthetic data: chance is 0.1
    registry.get.cache_clear()


# --- errors -----------------------------------------------------------------------------------------------------------


class Flat(nn.Module):
    """A conv flattened straight into a linear layer: the linear reads each channel as 1024 features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


@pytest.mark.parametrize(
    ("make", "message"),
    (
        (lambda d, w: Flat(), "reaches fc through a reshape"),
        (lambda d, w: nn.Conv2d(3, 10, 3), r"logits \[B, 10\], not to \(1, 10, 30, 30\)"),
        (lambda d, w: "net", "returned str, not an nn.Module"),
        (lambda d, w, net=Tiny(): net, "must build a new network"),
    ),
    ids=("flatten", "shape", "not-a-module", "same-instance"),
)
def test_what_tracing_cannot_slice_is_a_one_line_config_error(tp, make, message):
    with pytest.raises(ConfigError, match=message) as info:
        traced(make, label="bad")(1, 1)
    assert "\n" not in str(info.value)


def test_widths_out_of_range_are_refused(tp):
    arch = traced(tiny)(10, 1)
    with pytest.raises(ValueError, match="widths"):
        arch.build({"conv1": 0, "conv3": 4})


def test_missing_torch_pruning_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # `import torch_pruning` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'evo-sparse\[prune\]'"):
        traced(tiny)(10, 1)
