"""Run configuration: exact JSON round-trip, the run hash, and validation messages that name the option."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from evo_sparse.foundations import config, presets
from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.presets import PRESETS
from evo_sparse.models.registry import architecture
from evo_sparse.search import plugins

PRESET_NAMES = ("smoke", "cpu", "paper")


def test_the_three_presets_exist():
    assert set(PRESET_NAMES) <= set(PRESETS)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        presets.preset("huge")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_round_trip_through_json_is_exact(name):
    cfg = presets.preset(name)
    blob = json.dumps(cfg.to_dict())
    back = RunConfig.from_dict(json.loads(blob))
    assert back == cfg
    assert json.dumps(back.to_dict()) == blob
    assert back.run_hash() == cfg.run_hash()
    for key, value in PRESETS[name].items():
        group, field = key.split(".")
        assert getattr(getattr(back, group), field) == value
    assert back.preset == name


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_are_valid(name):
    assert presets.preset(name).validate() == presets.preset(name)


def test_round_trip_keeps_floats_and_none():
    cfg = RunConfig().updated({"search.sparsity": 0.1 + 0.2, "train.lr": 1e-3, "data.path": None, "seed": 2**40})
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.search.sparsity == 0.1 + 0.2


def test_from_dict_fills_missing_keys_with_defaults():
    cfg = RunConfig.from_dict({"seed": 3, "search": {"sparsity": 0.5}})
    assert cfg == RunConfig(seed=3).updated({"search.sparsity": 0.5})
    assert RunConfig.from_dict({}) == RunConfig()


@pytest.mark.parametrize(
    "d",
    (
        {"colour": "red"},
        {"search": {"sparsty": 0.5}},
        {"model": {"depth": 16, "act": "relu"}},
        {"data": {"dataset": "cifar10"}, "optimizer": {}},
    ),
)
def test_from_dict_rejects_unknown_keys(d):
    with pytest.raises(ConfigError, match="unknown config key"):
        RunConfig.from_dict(d)


def test_from_dict_names_the_unknown_key_with_its_group():
    with pytest.raises(ConfigError, match=r"search\.sparsty"):
        RunConfig.from_dict({"search": {"sparsty": 0.5}})


def test_from_dict_rejects_a_group_that_is_not_an_object():
    with pytest.raises(ConfigError, match="JSON object"):
        RunConfig.from_dict({"search": [1, 2]})
    with pytest.raises(ConfigError, match="JSON object"):
        RunConfig.from_dict([])


# --- the run hash ---------------------------------------------------------------------------------------------------


def test_default_config_has_no_hashed_items():
    assert RunConfig().hashed_items() == {}
    cpu = {"search.sampling": "global", "train.train_images": 2048, "train.lr": 0.05, "train.replicates": 2}
    assert presets.preset("cpu").hashed_items() == cpu  # the recipe the fidelity study chose
    defaults = config.flat_items(RunConfig())
    assert presets.preset("cpu").updated({k: defaults[k] for k in cpu}).run_hash() == RunConfig().run_hash()


def test_run_hash_differs_between_presets():
    hashes = {name: presets.preset(name).run_hash() for name in PRESET_NAMES}
    assert len(set(hashes.values())) == len(PRESET_NAMES)
    assert all(len(h) == 10 and int(h, 16) >= 0 for h in hashes.values())


def test_run_hash_differs_between_sparsities_and_is_stable():
    hashes = [RunConfig().updated({"search.sparsity": s}).run_hash() for s in (0.0, 0.5, 0.8, 0.9)]
    assert len(set(hashes)) == 4
    assert hashes == [RunConfig().updated({"search.sparsity": s}).run_hash() for s in (0.0, 0.5, 0.8, 0.9)]
    # A pure function of the non-default settings: sha256 of their sorted JSON.
    half = RunConfig().updated({"search.sparsity": 0.5})
    assert half.hashed_items() == {"search.sparsity": 0.5}
    assert half.run_hash() == hashlib.sha256(b'{"search.sparsity": 0.5}').hexdigest()[:10]
    assert RunConfig().run_hash() == hashlib.sha256(b"{}").hexdigest()[:10]


def test_run_hash_is_the_same_in_another_process():
    code = (
        "from evo_sparse.foundations.presets import preset; "
        "print(*(preset(n).updated({'search.sparsity': 0.9, 'seed': 3}).run_hash() for n in ('smoke', 'paper')))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env=os.environ | {"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    changes = {"search.sparsity": 0.9, "seed": 3}
    here = " ".join(presets.preset(n).updated(changes).run_hash() for n in ("smoke", "paper"))
    assert outs == {here}


def test_run_hash_ignores_where_the_run_happens():
    base = presets.preset("smoke")
    for change in ({"device": "cuda:1"}, {"runs_dir": "/elsewhere"}, {"data.path": "/data/cifar-10-python.tar.gz"}):
        moved = base.updated(change)
        assert moved != base
        assert moved.run_hash() == base.run_hash()
        assert not set(moved.hashed_items()) - set(base.hashed_items())


def test_run_hash_follows_what_is_computed():
    base = RunConfig()
    for change in (
        {"seed": 1},
        {"model.width": 4},
        {"train.lr": 0.1},
        {"search.algorithm": "ga"},
        {"data.split_seed": 1},
    ):
        assert base.updated(change).run_hash() != base.run_hash()


def test_setting_a_field_to_its_default_does_not_change_the_hash():
    assert RunConfig().updated({"search.sparsity": 0.8, "train.lr": 0.2}).run_hash() == RunConfig().run_hash()


def test_equal_configs_have_equal_hashes():
    a = RunConfig.from_dict({"train": {"lr": 1}})
    b = RunConfig.from_dict({"train": {"lr": 1.0}})
    assert a == b
    assert a.run_hash() == b.run_hash()


# --- validation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "option"), (
    ({"search.population": 1}, "--pop"),
    ({"search.population": 4, "search.keep": 4}, "--keep"),
    ({"search.population": 4, "search.keep": 7}, "--keep"),
    ({"search.keep": -1}, "--keep"),
    ({"search.sparsity": 1.0}, "--sparsity"),
    ({"search.sparsity": -0.1}, "--sparsity"),
    ({"search.generations": 0}, "--generations"),
    ({"model.width": 0}, "--width"),
    ({"search.algorithm": " "}, "--algorithm"),
    ({"search.sampling": "blockwise"}, "--sampling"),
    ({"search.crossover": "onepoint"}, "--crossover"),
    ({"data.dataset": "mnist"}, "--dataset"),
    ({"search.tournament": 0}, "--tournament"),
    ({"search.swap_prob": 1.5}, "--swap-prob"),
    ({"search.cxpb": -0.5}, "--cxpb"),
    ({"train.batch_size": 8192}, "--train-images"),
    ({"train.lr": 0.0}, "--lr"),
    ({"data.val_size": 5005}, "--val-size"),
))  # fmt: skip
def test_validate_names_the_bad_option_first(change, option):
    with pytest.raises(ConfigError) as info:
        RunConfig().updated(change).validate()
    message = str(info.value)
    assert message.startswith(option + " "), message
    assert "\n" not in message


def test_validate_says_what_to_use_instead():
    with pytest.raises(ConfigError, match=r"--sparsity must be in \[0, 1\).*not 1.0"):
        RunConfig().updated({"search.sparsity": 1.0}).validate()
    with pytest.raises(ConfigError, match=r"--algorithm 'cmaes' is not a known algorithm; choose one of weedout, ga"):
        plugins.identify(RunConfig().updated({"search.algorithm": "cmaes"}).validate())
    with pytest.raises(ConfigError, match=r"--depth must be 6n\+4.*not 15"):
        architecture(RunConfig().updated({"model.depth": 15}).model)  # the model checks its own depth
    with pytest.raises(ConfigError, match=r"--depth must be 6n\+4.*not 4"):
        architecture(RunConfig().updated({"model.depth": 4}).model)


def test_validate_accepts_edge_values():
    ok = RunConfig().updated(
        {
            "search.population": 2,
            "search.keep": 1,
            "search.sparsity": 0.0,
            "search.generations": 1,
            "model.depth": 10,
            "model.width": 1,
        }
    )
    assert ok.validate() is ok
    assert RunConfig().updated({"search.sparsity": 0.999}).validate().search.sparsity == 0.999


def test_survivors_default_to_half_the_population():
    assert RunConfig().updated({"search.population": 9}).search.survivors == 4
    assert RunConfig().updated({"search.population": 9, "search.keep": 2}).search.survivors == 2


def test_every_field_has_help():
    d = RunConfig().to_dict()
    keys = [k for k, v in d.items() if not isinstance(v, dict)]
    keys += [f"{group}.{name}" for group, v in d.items() if isinstance(v, dict) for name in v]
    assert len(keys) == 11 + 5 + 3 + 12 + 15  # run, data, model, train, search
    for key in keys:
        assert config.field_help(key).strip(), key
