"""The CIFAR ResNet and VGG of the model zoo: declared units, param_units, cost, errors, and the equivalence the search
relies on (a compacted network computes and trains exactly like the gated full-width one).

ResNet accepts any depth 6n+2 with n >= 1; ResNet-8 (n = 1, width 2) keeps the k > 1 case fast.
"""

import random

import pytest
import torch
import torch.nn.functional as F

from evo_sparse.foundations.config import TrainConfig
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models import registry
from evo_sparse.models.masks import Mask, compact_state, sample
from evo_sparse.models.resnet import ResNet
from evo_sparse.models.vgg import VGG
from evo_sparse.training.trainer import make_optimizer

MODELS = (("resnet", 20, 1), ("resnet", 8, 2), ("vgg", 11, 1))


def model_id(m):
    return f"{m[0]}{m[1]}x{m[2]}"


def random_mask(arch: registry.Architecture, sparsity: float, seed: int = 0) -> Mask:
    return Mask(arch.layout, tuple(sample(arch.layout, sparsity, rng=random.Random(seed))))


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def removed(mask: Mask) -> dict[str, torch.Tensor]:
    kept = mask.kept()
    return {
        u: torch.tensor(sorted(set(range(c)) - set(kept[u])), dtype=torch.long)
        for u, c in zip(mask.layout.names, mask.layout.sizes, strict=True)
    }


# --- units ------------------------------------------------------------------------------------------------------------


def test_units_of_resnet20():
    arch = registry.get("resnet", 20, 1)
    assert isinstance(arch, ResNet) and arch.label == "ResNet-20"
    expected = []
    for s, c in ((1, 16), (2, 32), (3, 64)):
        expected += [(f"stage{s}", c)] + [(f"stage{s}.block{b}.inner", c) for b in range(3)]
    assert [(u.name, u.channels) for u in arch.units] == expected  # 3 streams + 9 inner units = 12
    by = {u.name: u for u in arch.units}
    assert by["stage1"].writers == ("stem", "stages.0.0.conv2", "stages.0.1.conv2", "stages.0.2.conv2")
    assert by["stage2"].writers == ("stages.1.0.shortcut", "stages.1.0.conv2", "stages.1.1.conv2", "stages.1.2.conv2")
    assert by["stage3.block2.inner"].writers == ("stages.2.2.conv1",)
    net = arch.build()
    assert net.stages[0][0].shortcut is None  # the stem writes stage 1's stream through an identity shortcut
    assert all(net.stages[s][0].shortcut is not None for s in (1, 2))
    assert all(b.shortcut is None for blocks in net.stages for b in list(blocks)[1:])


def test_units_of_resnet8x2():
    arch = registry.get("resnet", 8, 2)
    assert arch.label == "ResNet-8x2"
    assert [(u.name, u.channels) for u in arch.units] == [
        ("stage1", 32), ("stage1.block0.inner", 32),
        ("stage2", 64), ("stage2.block0.inner", 64),
        ("stage3", 128), ("stage3.block0.inner", 128),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("depth", "channels"),
    (
        (11, (64, 128, 256, 256, 512, 512, 512, 512)),
        (16, (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)),
    ),
)
def test_units_of_vgg(depth, channels):
    arch = registry.get("vgg", depth, 1)
    assert isinstance(arch, VGG) and arch.label == f"VGG-{depth}"
    assert [(u.name, u.channels, u.writers) for u in arch.units] == [
        (f"conv{i}", c, (f"layers.{i}.conv",)) for i, c in enumerate(channels)
    ]
    assert [u.channels for u in registry.get("vgg", depth, 2).units] == [2 * c for c in channels]
    assert registry.get("vgg", depth, 2).label == f"VGG-{depth}x2"


@pytest.mark.parametrize("depth", (13, 19))
def test_vgg_depth_counts_its_weight_layers(depth):
    # The name counts the ImageNet network's weight layers: its convs (every one a unit here) and three linear layers.
    assert len(registry.get("vgg", depth, 1).units) + 3 == depth


@pytest.mark.parametrize("model", MODELS + (("vgg", 16, 1),), ids=model_id)
def test_output_shape_and_writers(model):
    arch = registry.get(*model)
    net = arch.build()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, registry.NUM_CLASSES)
    pu = arch.param_units()
    convs = {n.removesuffix(".weight") for n, p in net.named_parameters() if p.ndim == 4}
    for u in arch.units:
        assert all(pu[w + ".weight"][0] == u.name for w in u.writers), u
        convs -= set(u.writers)
    assert not convs  # every conv writes into exactly one declared unit


# --- param_units ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_param_units_cover_the_state_dict_exactly(model):
    arch = registry.get(*model)
    pu = arch.param_units()
    sd = arch.build().state_dict()
    assert set(pu) == set(sd)
    sizes = arch.full_widths()
    assert {u for dims in pu.values() for u in dims if u is not None} == set(sizes)
    mask = random_mask(arch, 0.6)
    small = arch.build(mask.widths()).state_dict()
    for key, dims in pu.items():
        assert all(unit is None for unit in dims[sd[key].dim() :]), key  # only real dims are indexed by units
        for dim, unit in enumerate(dims[: sd[key].dim()]):
            if unit is None:
                assert small[key].shape[dim] == sd[key].shape[dim], key
            else:
                assert sd[key].shape[dim] == sizes[unit], key
                assert small[key].shape[dim] == mask.widths()[unit], key
        if key.endswith("num_batches_tracked"):
            assert dims == (None, None)
    last = arch.units[-1].name if model[0] == "vgg" else "stage3"
    assert pu["fc.weight"] == (None, last) and pu["fc.bias"] == (None, None)


# --- cost -------------------------------------------------------------------------------------------------------------


def _resnet_by_hand(depth: int, width: int) -> tuple[int, int]:
    """(params, MACs) of ResNet-depth at width k counted from the architecture: convs, BN scale+shift, fc."""
    n = (depth - 2) // 6
    c = [16 * width, 16 * width, 32 * width, 64 * width]  # stem, stages 1-3
    pixels = [1024, 1024, 256, 64]
    params, macs = 27 * c[0] + 2 * c[0], pixels[0] * c[0] * 27
    for s in (1, 2, 3):
        for b in range(n):
            c_in = c[s - 1] if b == 0 else c[s]
            params += 9 * c_in * c[s] + 9 * c[s] * c[s] + 4 * c[s]
            macs += pixels[s] * (9 * c_in * c[s] + 9 * c[s] * c[s])
            if c_in != c[s]:
                params += c_in * c[s] + 2 * c[s]
                macs += pixels[s] * c_in * c[s]
    return params + 10 * c[3] + 10, macs + 10 * c[3]


def _vgg_by_hand(depth: int, width: int) -> tuple[int, int]:
    layers = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}[depth]
    params = macs = 0
    c_in, side = 3, 32
    for group, count in enumerate(layers):
        c = min(64 * 2**group, 512) * width
        for _ in range(count):
            params += 9 * c_in * c + 2 * c
            macs += side * side * 9 * c_in * c
            c_in = c
        side //= 2
    return params + 10 * c_in + 10, macs + 10 * c_in


@pytest.mark.parametrize(
    ("model", "by_hand"),
    (
        (("resnet", 20, 1), _resnet_by_hand),
        (("resnet", 56, 1), _resnet_by_hand),
        (("resnet", 8, 2), _resnet_by_hand),
        (("vgg", 11, 1), _vgg_by_hand),
        (("vgg", 16, 1), _vgg_by_hand),
        (("vgg", 19, 2), _vgg_by_hand),
    ),
    ids=lambda x: model_id(x) if isinstance(x, tuple) else "",
)
def test_cost_matches_a_count_by_hand(model, by_hand):
    assert registry.get(*model).cost() == by_hand(*model[1:])


def test_cost_is_near_the_published_sizes():
    # ResNet-20/56/110: 0.27M / 0.85M / 1.7M (He et al., Table 6, option A: the projections add ~1%).
    for depth, published in ((20, 0.27e6), (56, 0.85e6), (110, 1.7e6)):
        assert abs(registry.get("resnet", depth, 1).cost()[0] - published) / published < 0.03
    assert abs(registry.get("vgg", 16, 1).cost()[0] - 14.7e6) / 14.7e6 < 0.01  # the common CIFAR VGG-16 with BN


@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_cost_matches_a_real_network_and_shrinks_with_the_widths(model):
    arch = registry.get(*model)
    full_params, full_macs = arch.cost()
    assert full_params == sum(p.numel() for p in arch.build().parameters())
    mask = random_mask(arch, 0.5)
    params, macs = arch.cost(mask.widths())
    assert params == sum(p.numel() for p in arch.build(mask.widths()).parameters())
    # Channel sparsity s removes roughly 1-(1-s)^2 of the conv weights and MACs.
    assert 0.2 < params / full_params < 0.3
    assert 0.2 < macs / full_macs < 0.3


# --- errors -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "depth"), (("resnet", 2), ("resnet", 21), ("resnet", 16), ("vgg", 12), ("vgg", 8)))
def test_bad_depth_raises_config_error(name, depth):
    with pytest.raises(ConfigError, match=f"--depth for --model {name} .*not {depth}$"):
        registry.get(name, depth, 1)


@pytest.mark.parametrize(("name", "depth"), (("resnet", 20), ("vgg", 11)))
def test_bad_width_raises_config_error(name, depth):
    with pytest.raises(ConfigError, match="--width"):
        registry.get(name, depth, 0)


@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_bad_widths_are_refused(model):
    arch = registry.get(*model)
    full = arch.full_widths()
    first = arch.units[0].name
    for widths in ({**full, first: 0}, {**full, first: full[first] + 1}, {k: v for k, v in full.items() if k != first}):
        with pytest.raises(ValueError, match="widths"):
            arch.build(widths)


# --- gating and compaction --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_masked_nodes_have_no_effect(model, train_mode):
    arch = registry.get(*model)
    mask = random_mask(arch, 0.5)
    net = arch.build().double().train(train_mode)
    net.set_gates(mask.gates(next(net.parameters())))
    x, _ = batch(4)
    pu, gone = arch.param_units(), removed(mask)
    with torch.no_grad():
        before = net(x)
        # Large positive values (a valid running_var) in every entry of a removed channel, as writer or as reader.
        for name, t in net.state_dict().items():
            for dim, unit in enumerate(pu[name]):
                if unit is not None:
                    t.index_copy_(dim, gone[unit], torch.rand_like(t.index_select(dim, gone[unit])) * 10 + 0.5)
        torch.testing.assert_close(net(x), before, atol=1e-12, rtol=1e-12)
        # Not vacuous: perturbing a kept channel changes the output.
        first = arch.units[0]
        net.get_parameter(first.writers[0] + ".weight")[mask.kept()[first.name][0]] += 1.0
        assert (net(x) - before).abs().max() > 1e-3


@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_masked_nodes_get_exactly_zero_gradient(model):
    arch = registry.get(*model)
    mask = random_mask(arch, 0.5)
    net = arch.build().double().train()
    net.set_gates(mask.gates(next(net.parameters())))
    x, y = batch(4)
    F.cross_entropy(net(x), y).backward()
    pu, gone = arch.param_units(), removed(mask)
    for name, p in net.named_parameters():
        kept_grad = p.grad.clone()
        for dim, unit in enumerate(pu[name]):
            if unit is not None:
                assert torch.count_nonzero(p.grad.index_select(dim, gone[unit])) == 0, (name, dim)
                kept_grad.index_fill_(dim, gone[unit], 0.0)
        assert kept_grad.abs().sum() > 0, name  # the kept part does learn


@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_compacted_network_computes_and_trains_like_the_gated_network(model):
    # float64: the two sum the same products in different orders, which float32 would blur to 1e-5 after a step.
    arch = registry.get(*model)
    mask = random_mask(arch, 0.6)
    full = arch.build().double()
    full.set_gates(mask.gates(next(full.parameters())))
    small = arch.sub_network(full.state_dict(), mask).double()
    initial = {k: v.clone() for k, v in small.state_dict().items()}

    def agree(train: bool, seed: int) -> None:
        full.train(train)
        small.train(train)
        x, _ = batch(4, seed=seed)
        with torch.no_grad():
            torch.testing.assert_close(small(x), full(x), atol=1e-10, rtol=1e-10)

    agree(False, 10)
    agree(True, 11)
    cfg = TrainConfig(lr=0.05)
    optimizers = (make_optimizer(full, cfg), make_optimizer(small, cfg))
    full.train()
    small.train()
    for step in range(3):
        x, y = batch(4, seed=step)
        outs = []
        for net, opt in zip((full, small), optimizers, strict=True):
            out = net(x)
            outs.append(out.detach())
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing).backward()
            opt.step()
        torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=1e-10)
    # The trained compacted weights and BN statistics are the kept slice of the gated network's.
    expected = compact_state(full.state_dict(), arch.param_units(), mask)
    got = small.state_dict()
    assert set(got) == set(expected)
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-10, rtol=1e-10, msg=key)
    first_conv = next(k for k in got if k.endswith("conv.weight") or k == "stem.weight")
    for key in (first_conv, "fc.weight"):
        assert (got[key] - initial[key]).abs().max() > 1e-4, key  # it trained
    agree(False, 12)
    agree(True, 13)


@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_set_gates_none_restores_the_dense_network(model):
    arch = registry.get(*model)
    net = arch.build().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = net(x)
        net.set_gates(random_mask(arch, 0.5).gates(x))
        assert (net(x) - dense).abs().max() > 1e-4
        net.set_gates(None)
        torch.testing.assert_close(net(x), dense, atol=0, rtol=0)


# --- every registered network runs a search ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "depth", "width"), [("wrn", 10, 1), ("resnet", 8, 1), ("vgg", 11, 1)])
def test_every_builtin_network_runs_a_smoke_search(tmp_path, name, depth, width):
    from evo_sparse.foundations.presets import preset
    from evo_sparse.runs.run import execute, summarize

    cfg = preset("smoke").updated({
        "model.name": name, "model.depth": depth, "model.width": width, "runs_dir": str(tmp_path), "backend": "local",
    })  # fmt: skip
    folder = execute(cfg, log=lambda _: None, show_progress=False)
    s = summarize(folder)
    assert s["finished"] and s["failed_evaluations"] == 0
    assert s["model"]["label"] == registry.get(name, depth, width).label
    assert s["model"]["batched"] == (name == "wrn")
    assert s["best"]["fitness"] > 0.1  # synthetic data: chance is 0.1


def test_an_unknown_or_unimportable_model_is_a_one_line_error():
    with pytest.raises(ConfigError, match="not a registered model; choose one of wrn, resnet, vgg"):
        registry.get("alexnet", 16, 1)
    with pytest.raises(ConfigError, match="cannot import it"):
        registry.get("no_such_pkg.nets:Net", 16, 1)
