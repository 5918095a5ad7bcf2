"""The Wide ResNet: shapes, declared units, cost, and the gating / compaction equivalences the search relies on."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from evo_sparse.foundations.config import TrainConfig
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models import wrn
from evo_sparse.models.masks import Layout, Mask, compact_state, sample
from evo_sparse.training.trainer import make_optimizer

ARCHS = ((10, 1), (16, 2))  # k = 1 (stem merged into stage 1, identity shortcut) and k > 1 (stem unit, projection)


def arch_id(a):
    return f"wrn{a[0]}-{a[1]}"


def random_mask(depth: int, width: int, sparsity: float) -> Mask:
    layout = Layout.from_units(wrn.units(depth, width))
    return Mask(layout, tuple(sample(layout, sparsity)))


def gated(depth: int, width: int, mask: Mask) -> wrn.WideResNet:
    net = wrn.WideResNet(depth, width)
    net.set_gates(mask.gates(next(net.parameters())))
    return net


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def masked_slices(name: str, tensor: torch.Tensor, units: tuple, mask: Mask):
    """(dim, removed channel indices) for each dim of ``tensor`` indexed by a unit."""
    kept = mask.kept()
    full = dict(zip(mask.layout.names, mask.layout.sizes, strict=True))
    for dim, unit in enumerate(units):
        if unit is not None:
            removed = sorted(set(range(full[unit])) - set(kept[unit]))
            yield dim, torch.tensor(removed, dtype=torch.long)


# --- shape, units, cost -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS + ((22, 1),), ids=arch_id)
def test_output_shape(arch):
    net = wrn.WideResNet(*arch)
    for n in (1, 3):
        assert net(torch.randn(n, 3, 32, 32)).shape == (n, wrn.NUM_CLASSES)


def test_units_of_wrn16_2():
    us = wrn.units(16, 2)
    assert [(u.name, u.channels) for u in us] == [
        ("stem", 16),
        ("stage1", 32), ("stage1.block0.inner", 32), ("stage1.block1.inner", 32),
        ("stage2", 64), ("stage2.block0.inner", 64), ("stage2.block1.inner", 64),
        ("stage3", 128), ("stage3.block0.inner", 128), ("stage3.block1.inner", 128),
    ]  # fmt: skip
    by = {u.name: u for u in us}
    assert by["stem"].writers == ("stem",)
    assert by["stage2"].writers == ("stages.1.0.shortcut", "stages.1.0.conv2", "stages.1.1.conv2")
    assert by["stage3.block1.inner"].writers == ("stages.2.1.conv1",)


def test_units_of_wrn10_1_merge_the_stem_into_stage1():
    us = wrn.units(10, 1)
    assert [(u.name, u.channels) for u in us] == [
        ("stage1", 16), ("stage1.block0.inner", 16),
        ("stage2", 32), ("stage2.block0.inner", 32),
        ("stage3", 64), ("stage3.block0.inner", 64),
    ]  # fmt: skip
    assert "stem" not in {u.name for u in us}
    assert us[0].writers == ("stem", "stages.0.0.conv2")  # identity shortcut: no projection conv
    net = wrn.WideResNet(10, 1)
    assert net.stages[0][0].shortcut is None and net.stages[1][0].shortcut is not None


@pytest.mark.parametrize("arch", ARCHS + ((16, 8), (22, 1)), ids=arch_id)
def test_unit_writers_are_the_layers_writing_into_the_unit(arch):
    with torch.device("meta"):
        net = wrn.WideResNet(*arch)
    pu = net.param_units()
    writers = {
        name.removesuffix(".weight")
        for name, (out, _) in pu.items()
        if name.endswith("conv1.weight")
        or name.endswith("conv2.weight")
        or name.endswith("shortcut.weight")
        or name == "stem.weight"
    }
    for u in wrn.units(*arch):
        assert all(pu[w + ".weight"][0] == u.name for w in u.writers)
        writers -= set(u.writers)
    assert not writers  # every conv writes into exactly one declared unit


def _expected_params(depth: int, width: int) -> int:
    """Parameters of WRN-depth-width counted by hand from the architecture (convs, BN scale+shift, fc)."""
    n = (depth - 4) // 6
    c = [16, 16 * width, 32 * width, 64 * width]
    total = 3 * c[0] * 9 if width > 1 else 3 * c[1] * 9  # k = 1: the stem writes stage 1's 16 channels
    c_prev = c[0] if width > 1 else c[1]
    for s in (1, 2, 3):
        for b in range(n):
            c_in = c_prev if b == 0 else c[s]
            total += 2 * c_in + c_in * c[s] * 9 + 2 * c[s] + c[s] * c[s] * 9
            total += c_in * c[s] if c_in != c[s] else 0
        c_prev = c[s]
    return total + 2 * c[3] + c[3] * 10 + 10


@pytest.mark.parametrize(
    ("arch", "published"),
    (((16, 4), 2.75e6), ((16, 8), 10.96e6), ((28, 10), 36.5e6)),
    ids=lambda x: arch_id(x) if isinstance(x, tuple) else "",
)
def test_cost_params_match_the_wrn_paper(arch, published):
    params, macs = wrn.WRN(*arch).cost()
    assert params == _expected_params(*arch)
    assert abs(params - published) / published < 0.01
    assert macs > params  # convs are reused at every pixel


def test_cost_of_wrn16_4_exact():
    assert wrn.WRN(16, 4).cost()[0] == 2_748_890


@pytest.mark.parametrize("arch", ARCHS, ids=arch_id)
def test_cost_matches_a_real_network_and_shrinks_with_the_mask(arch):
    mask = random_mask(*arch, 0.5)
    params, macs = wrn.WRN(*arch).cost(mask.widths())
    net = wrn.WideResNet(*arch, mask.widths())
    assert params == sum(p.numel() for p in net.parameters())
    full_params, full_macs = wrn.WRN(*arch).cost()
    assert full_params == _expected_params(*arch)
    # Channel sparsity s removes roughly 1-(1-s)^2 of the conv weights and MACs.
    assert 0.2 < params / full_params < 0.3
    assert 0.2 < macs / full_macs < 0.3


def test_cost_macs_of_wrn10_1_by_hand():
    # stem 32x32x16x27; stage1 (32x32): conv1,conv2 16->16; stage2 (16x16): 16->32, 32->32, 1x1 16->32;
    # stage3 (8x8): 32->64, 64->64, 1x1 32->64; fc 64x10.
    expected = 1024 * 16 * 27 + 2 * 1024 * 16 * 144 + 256 * 32 * (144 + 288 + 16) + 64 * 64 * (288 + 576 + 32) + 640
    assert wrn.WRN(10, 1).cost()[1] == expected


@pytest.mark.parametrize("depth", (15, 4, 9, 12))
def test_bad_depth_raises_config_error(depth):
    with pytest.raises(ConfigError, match="--depth"):
        wrn.units(depth, 1)
    with pytest.raises(ConfigError, match="--depth"):
        wrn.WideResNet(depth, 1)
    with pytest.raises(ConfigError):
        wrn.WRN(depth, 1).cost()


def test_bad_widths_are_refused():
    full = {u.name: u.channels for u in wrn.units(10, 1)}
    for widths in (
        {**full, "stage2": 0},
        {**full, "stage2": 33},
        {k: v for k, v in full.items() if k != "stage3"},
        {**full, "stem": 16},
    ):
        with pytest.raises(ValueError, match="widths"):
            wrn.WideResNet(10, 1, widths)


# --- param_units ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS + ((22, 1),), ids=arch_id)
def test_param_units_cover_the_state_dict_exactly(arch):
    full = wrn.WideResNet(*arch)
    pu = full.param_units()
    sd = full.state_dict()
    assert set(pu) == set(sd)
    names = {u.name for u in full.units}
    assert {u for dims in pu.values() for u in dims if u is not None} == names
    sizes = {u.name: u.channels for u in full.units}
    mask = random_mask(*arch, 0.6)
    small = wrn.WideResNet(*arch, mask.widths()).state_dict()
    for key, dims in pu.items():
        assert all(unit is None for unit in dims[sd[key].dim() :]), key  # only real dims are indexed by units
        for dim, unit in enumerate(dims[: sd[key].dim()]):
            if unit is None:
                assert small[key].shape[dim : dim + 1] == sd[key].shape[dim : dim + 1]
            else:
                assert sd[key].shape[dim] == sizes[unit]
                assert small[key].shape[dim] == mask.widths()[unit]
    assert pu["fc.weight"] == (None, "stage3") and pu["fc.bias"] == (None, None)


# --- gating: masked nodes have no effect and get no gradient ----------------------------------------------------------


def _perturb_masked(net: wrn.WideResNet, mask: Mask) -> None:
    """Overwrite every weight and BN entry of removed channels (as writer or reader) with large random values."""
    pu = net.param_units()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            for dim, removed in masked_slices(name, t, pu[name], mask):
                if len(removed):
                    noise = torch.rand_like(t.index_select(dim, removed)) * 10 + 0.5  # positive: valid running_var
                    t.index_copy_(dim, removed, noise)


@pytest.mark.parametrize("train_mode", (False, True), ids=("eval", "train"))
@pytest.mark.parametrize("arch", ARCHS, ids=arch_id)
def test_masked_nodes_have_no_effect(arch, train_mode):
    mask = random_mask(*arch, 0.5)
    net = gated(*arch, mask)
    net.train(train_mode)
    x, _ = batch(4)
    with torch.no_grad():
        before = net(x)
        _perturb_masked(net, mask)
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    # Not vacuous: perturbing a kept channel changes the output.
    with torch.no_grad():
        net.stages[1][0].conv1.weight[mask.kept()[net.stages[1][0].units[1]][0]] += 1.0
        assert (net(x) - before).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS, ids=arch_id)
def test_masked_nodes_get_exactly_zero_gradient(arch):
    mask = random_mask(*arch, 0.5)
    net = gated(*arch, mask)
    net.train()
    x, y = batch(8)
    F.cross_entropy(net(x), y).backward()
    pu = net.param_units()
    checked = set()
    for name, p in net.named_parameters():
        assert p.grad is not None
        kept_grad = p.grad.clone()
        for dim, removed in masked_slices(name, p, pu[name], mask):
            assert torch.count_nonzero(p.grad.index_select(dim, removed)) == 0, (name, dim)
            kept_grad.index_fill_(dim, removed, 0.0)
            checked.add((name.rsplit(".", 1)[0].split(".")[-1], dim))
        assert kept_grad.abs().sum() > 0, name  # the kept part does learn
    # conv outputs and inputs, shortcut outputs and inputs, BN scale/shift and the fc columns were all covered.
    assert {
        ("conv1", 0),
        ("conv1", 1),
        ("conv2", 0),
        ("conv2", 1),
        ("shortcut", 0),
        ("shortcut", 1),
        ("stem", 0),
        ("bn1", 0),
        ("bn2", 0),
        ("bn", 0),
        ("fc", 1),
    } <= checked


def test_set_gates_none_restores_the_dense_network():
    net = wrn.WideResNet(10, 1).eval()
    x, _ = batch(2)
    dense = net(x)
    net.set_gates(random_mask(10, 1, 0.5).gates(x))
    assert (net(x) - dense).abs().max() > 1e-4
    net.set_gates(None)
    torch.testing.assert_close(net(x), dense, atol=0, rtol=0)


# --- compaction: the small dense network computes what the gated full network computes --------------------------------


def _compacted(full: wrn.WideResNet, mask: Mask) -> wrn.WideResNet:
    small = wrn.WideResNet(full.depth, full.width, mask.widths())
    small.load_state_dict(compact_state(full.state_dict(), full.param_units(), mask))
    return small


@pytest.mark.parametrize("sparsity", (0.0, 0.5, 0.9))
@pytest.mark.parametrize("arch", ARCHS, ids=arch_id)
def test_compacted_network_equals_gated_network_at_init(arch, sparsity):
    mask = random_mask(*arch, sparsity)
    full = gated(*arch, mask).eval()
    small = _compacted(full, mask).eval()
    x, _ = batch(4)
    with torch.no_grad():
        torch.testing.assert_close(small(x), full(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "lr", "tol"), ((torch.float32, 0.05, 1e-5), (torch.float64, 0.2, 1e-9)), ids=("float32", "float64")
)
@pytest.mark.parametrize("arch", ARCHS, ids=arch_id)
def test_compacted_network_trains_like_gated_network(arch, dtype, lr, tol):
    # float32 with lr 0.2 (the default peak, never reached in the first steps of the warm-up) on random inputs is
    # chaotic: 1e-7 rounding differences grow to 1e-4 in one step. In float64 the two agree to 1e-15 even at 0.2.
    mask = random_mask(*arch, 0.5)
    full = gated(*arch, mask).to(dtype)
    small = _compacted(full, mask).to(dtype)
    initial = {k: v.clone() for k, v in small.state_dict().items()}
    cfg = TrainConfig(lr=lr)
    opt_full, opt_small = make_optimizer(full, cfg), make_optimizer(small, cfg)
    full.train()
    small.train()
    for step in range(3):
        x, y = batch(8, seed=step)
        outs = []
        for net, opt in ((full, opt_full), (small, opt_small)):
            out = net(x.to(dtype))
            outs.append(out.detach())
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing).backward()
            opt.step()
        torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
    # The compacted weights (and BN running statistics) are the kept slice of the gated network's weights.
    expected = compact_state(full.state_dict(), full.param_units(), mask)
    got = small.state_dict()
    assert set(got) == set(expected)
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=tol, rtol=tol, msg=key)
    assert (got["stages.1.0.conv1.weight"] - initial["stages.1.0.conv1.weight"]).abs().max() > 1e-4  # it trained
    full.eval()
    small.eval()
    x, _ = batch(4, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(small(x.to(dtype)), full(x.to(dtype)), atol=tol, rtol=tol)


def test_compact_state_copies_and_slices():
    full = wrn.WideResNet(10, 1)
    mask = random_mask(10, 1, 0.5)
    state = full.state_dict()
    out = compact_state(state, full.param_units(), mask)
    kept = mask.kept()
    torch.testing.assert_close(
        out["stages.1.0.conv1.weight"],
        state["stages.1.0.conv1.weight"][kept["stage2.block0.inner"]][:, kept["stage1"]],
        atol=0,
        rtol=0,
    )
    torch.testing.assert_close(out["fc.weight"], state["fc.weight"][:, kept["stage3"]], atol=0, rtol=0)
    before = {k: v.clone() for k, v in state.items()}
    for t in out.values():
        t.zero_()  # the result holds copies: writing into it leaves the parent untouched
    assert all(torch.equal(state[k], before[k]) for k in state)


# --- regression: tiny compacted networks must not crash the CPU backward ----------------------------------------------

_TINY_NET_SCRIPT = textwrap.dedent("""
    import random, sys
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    from evo_sparse.models import wrn
    from evo_sparse.foundations.config import TrainConfig
    from evo_sparse.models.masks import Layout, Mask, sample
    from evo_sparse.training.trainer import make_optimizer
    channels_last = sys.argv[1] == "channels_last"
    random.seed(0)
    torch.manual_seed(0)
    layout = Layout.from_units(wrn.units(16, 2))
    widths = Mask(layout, tuple(sample(layout, 0.9))).widths()
    assert widths["stem"] < 8 and widths["stage1"] < 8 and widths["stage2"] < 8, widths
    net = wrn.WideResNet(16, 2, widths)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, TrainConfig())
    net.train()
    for step in range(3):
        x = torch.randn(16, 3, 32, 32)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), torch.randint(0, 10, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), loss
    print("ok", widths["stage1"], widths["stage2"])
""")


# channels_last: the oneDNN bug itself, which aborts the process on some CPUs (an AMD EPYC here) and not on others; the
# code never trains a plain network in channels_last on the CPU (trainer.prepare), so this case records the bug and
# fails nothing when it strikes.
TORCH_BUG = pytest.mark.xfail(reason="oneDNN heap corruption (channels_last, < 8 input channels) on some CPUs")


@pytest.mark.parametrize("memory_format", ("contiguous", pytest.param("channels_last", marks=TORCH_BUG)))
def test_narrow_compacted_network_survives_forward_and_backward(memory_format):
    # Run in a child process: the failure mode seen before is a process abort (heap corruption in the CPU backward of
    # 1x1 stride-2 convs in channels_last with fewer than 8 input channels), which would take pytest down with it.
    proc = subprocess.run(
        [sys.executable, "-c", _TINY_NET_SCRIPT, memory_format], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.stdout.split() == ["ok", "3", "6"]
