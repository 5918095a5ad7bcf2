"""Final training, piece by piece: the recipe config, the schedules, one epoch's batches, and a diverging training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evo_sparse import final
from evo_sparse.config import FINAL_PRESETS, FinalConfig, final_preset, preset
from evo_sparse.errors import ConfigError
from evo_sparse.fitness import Evaluator
from evo_sparse.masks import Mask, sample
from evo_sparse.runs import layout_of, load_splits


@pytest.mark.parametrize("name", list(FINAL_PRESETS))
def test_recipe_round_trips_and_validates(name):
    recipe = final_preset(name).validate()
    back = FinalConfig.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert back == recipe and back.final_hash() == recipe.final_hash()
    assert final_preset("paper") == FinalConfig()  # the WRN paper's recipe is the default


def test_recipe_hash_ignores_how_many_networks():
    base = final_preset("smoke")
    assert base.updated({"masks": 3, "seeds": 5}).final_hash() == base.final_hash()
    assert base.updated({"epochs": 3}).final_hash() != base.final_hash()
    assert base.updated({"lr": 1}).lr == 1.0 and isinstance(base.updated({"lr": 1}).lr, float)


@pytest.mark.parametrize(
    "change, option",
    [
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0.0}, "--final-lr"),
        ({"schedule": "linear"}, "--schedule"),
        ({"warmup": 1.0}, "--final-warmup"),
        ({"seeds": 0}, "--final-seeds"),
        ({"masks": -1}, "--final-masks"),
    ],
)
def test_bad_recipes_name_their_option(change, option):
    with pytest.raises(ConfigError, match=option):
        final_preset("smoke").updated(change).validate()
    with pytest.raises(ConfigError, match="unknown config key"):
        FinalConfig.from_dict({"epoch": 3})


def test_step_schedule_is_the_wrn_papers():
    recipe = FinalConfig()  # 200 epochs, lr 0.1, x0.2 at 60/120/160
    steps, per_epoch = 200 * 10, 10
    lr = [final.lr_at(e * per_epoch, steps, 200, recipe) for e in (0, 59, 60, 119, 120, 159, 160, 199)]
    assert lr == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008])


def test_onecycle_and_cosine_warm_up_and_end_near_zero():
    for schedule in ("onecycle", "cosine"):
        recipe = FinalConfig(schedule=schedule, warmup=0.1, lr=0.4, epochs=10)
        lr = [final.lr_at(s, 1000, 10, recipe) for s in range(1000)]
        assert lr[0] == pytest.approx(0.004) and max(lr) == pytest.approx(0.4) and lr.index(max(lr)) == 99
        assert lr[-1] < 0.01 and all(a >= b for a, b in zip(lr[100:], lr[101:]))


def test_one_epoch_of_batches_sees_each_image_once_in_a_seeded_order():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 32, 32).contiguous()
    y = torch.arange(100)
    batches = list(final.epoch_batches(x, y, 16, seed=1))
    assert len(batches) == 6 and all(b[0].shape == (16, 3, 32, 32) for b in batches)  # the last partial one dropped
    labels = torch.cat([b[1] for b in batches])
    assert len(set(labels.tolist())) == 96
    again = torch.cat([b[1] for b in final.epoch_batches(x, y, 16, seed=1)])
    other = torch.cat([b[1] for b in final.epoch_batches(x, y, 16, seed=2)])
    assert torch.equal(labels, again) and not torch.equal(labels, other)
    centre = torch.cat([b[0] for b in batches])[:, 0, 16, 16]  # crops move the image by at most 4 pixels
    assert torch.equal(centre.long(), labels)


def test_a_diverging_training_is_a_failed_record_not_a_crash():
    cfg = preset("smoke").updated({"data.val_size": 100})
    splits = load_splits(cfg, log=lambda _: None)
    evaluator = Evaluator(cfg, splits)
    layout = layout_of(cfg)
    mask = Mask(layout, tuple(sample(layout, 0.9))).encode()
    recipe = final_preset("smoke").updated({"lr": 1e12, "epochs": 1, "batch_size": 128})
    job = final.Job(cfg, recipe, "random", 0, 0, mask, 0.9, {"status": "ok", "fitness": 0.1}, None, "here")
    record = final.train_network(job, evaluator, splits)
    assert record["status"] == "failed" and record["final_test_acc"] is None
    assert "loss became" in record["reason"] or "not finite" in record["reason"]
    json.dumps(record, allow_nan=False)  # storable as it is
    assert record["early_fitness"] == 0.1 and record["early_from"] == "search"
    assert math.isfinite(record["seconds"])
