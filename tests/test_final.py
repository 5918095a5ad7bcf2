"""Final training, piece by piece: the recipe config, the schedules, one epoch's batches, and a diverging training."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from evo_sparse.foundations.config import FINAL_PRESETS, FinalConfig, final_preset, preset
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.models.masks import Mask, sample
from evo_sparse.runs.run import layout_of
from evo_sparse.study import final
from evo_sparse.training.data import load_splits
from evo_sparse.training.fitness import Evaluator


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


def test_every_network_gets_its_early_fitness_again_under_a_replicate_the_search_never_saw(tmp_path):
    cfg = preset("smoke").updated({"data.val_size": 100})
    splits = load_splits(cfg, log=lambda _: None)
    evaluator = Evaluator(cfg, splits)  # replicate 0: the one the search used
    heldout = Evaluator(cfg, splits, "cpu", replicates=[cfg.train.replicates])
    assert final.heldout_replicate(cfg) == 1 and [r.index for r in heldout.replicates] == [1]
    layout = layout_of(cfg)
    rng = random.Random(0)
    masks = [Mask(layout, tuple(sample(layout, 0.5, rng=rng))) for _ in range(2)]
    search = [evaluator.evaluate_mask(m)["fitness"] for m in masks]
    again = [heldout.evaluate_mask(m)["fitness"] for m in masks]
    assert search != again  # another data order, another value: a re-measurement, not a copy
    recipe = final_preset("smoke").updated({"epochs": 1})
    found = {"status": "ok", "fitness": search[0]}  # the search's record of a found mask
    jobs = [
        final.Job(cfg, recipe, "found", 0, 0, masks[0].encode(), 0.5, found, tmp_path / "f.json", "here"),
        final.Job(cfg, recipe, "random", 1, 0, masks[1].encode(), 0.5, None, tmp_path / "r.json", "here"),
    ]
    found_record = final.train_network(jobs[0], evaluator, splits)  # builds the held-out evaluator itself
    random_record = final.train_network(jobs[1], evaluator, splits, heldout)
    for record, i in ((found_record, 0), (random_record, 1)):
        assert record["status"] == "ok" and record["final_test_acc"] is not None
        assert record["early_fitness"] == search[i] and record["early_fitness_heldout"] == again[i]
        assert record["early_heldout_replicate"] == 1
    assert (found_record["early_from"], random_record["early_from"]) == ("search", "evaluator")
    # the progress estimate counts the brief trainings: the held-out one always, the search's when not recorded
    epoch = final.train_split_size(cfg) // recipe.batch_size * recipe.batch_size
    assert jobs[0].images == epoch + cfg.train.train_images
    assert jobs[1].images == epoch + 2 * cfg.train.train_images


def test_the_worker_context_caches_the_held_out_evaluator_beside_the_searchs():
    cfg = preset("smoke").updated({"data.val_size": 100})
    cpu = torch.device("cpu")
    own, splits = final._context(cfg, cpu)
    held, same = final._context(cfg, cpu, (final.heldout_replicate(cfg),))
    assert [r.index for r in own.replicates] == [0] and [r.index for r in held.replicates] == [1]
    assert same is splits and final._context(cfg, cpu)[0] is own and final._context(cfg, cpu, (1,))[0] is held
    for seed in range(1, 6):  # more runs than the cache holds: it keeps the last few, the one in use among them
        final._context(cfg.updated({"seed": seed}), cpu)
    assert len(final._cache["evaluators"]) == final.EVALUATORS_CACHED


def test_a_result_written_before_the_held_out_early_fitness_is_kept_not_retrained(tmp_path):
    cfg = preset("smoke").updated({"data.val_size": 100})
    layout = layout_of(cfg)
    mask = Mask(layout, (1,) * layout.size).encode()
    path = tmp_path / "final_x" / final.result_name("dense", 0, 0)
    job = final.Job(cfg, final_preset("smoke"), "dense", 0, 0, mask, 0.0, None, path, str(tmp_path))
    old = {"kind": "dense", "status": "ok", "early_fitness": 0.2, "final_test_acc": 0.5}  # no early_fitness_heldout
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    assert final.pending([job]) == []
    assert final.execute([job], device="cpu", workers=1) == [old]
