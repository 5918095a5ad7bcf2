"""Presets: named configs for the search (``preset``) and for final training (``final_preset``), not code paths.
Each setting has its reason beside it."""

from __future__ import annotations

from typing import Any

from evo_sparse.foundations.config import FinalConfig, RunConfig, flat_items
from evo_sparse.foundations.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on 2 CPU cores: synthetic data, the smallest WRN, a few hundred images per fitness.
    "smoke": {
        "data.dataset": "synthetic",
        "data.val_size": 250,  # synthetic: 25 per class
        "model.depth": 10,  # n = 1 block per stage
        "model.width": 1,  # 16/32/64 channels
        "train.train_images": 512,
        "train.batch_size": 32,
        "search.population": 6,
        "search.generations": 3,
        "search.sparsity": 0.5,
    },
    # Real CIFAR-10 on a 2-core CPU, the recipe chosen by measurement (plots/fidelity_cpu/, README "Fitness you can
    # trust"): the cheapest measured setting whose fitness ranks masks with reliability >= 0.7 (24 masks x 3
    # replicates). Layerwise masks all compact to one architecture, and their fitness held almost no mask signal
    # (ICC <= 0.33 at lr 0.2, at most 0.60 at lr 0.05; Kendall tau with a 2-epoch training <= 0.22, every CI holding
    # 0); global masks differ in widths, and the short, gentle training ranked them best: ICC(1) 0.68 per training,
    # Kendall tau 0.38 with the 2-epoch test accuracy. Two replicates lift the reliability to 0.81 (Spearman-Brown).
    "cpu": {
        "search.sampling": "global",
        "train.train_images": 2048,
        "train.lr": 0.05,
        "train.replicates": 2,
    },
    # GPU scale: the reference study's regime (an overparameterized WRN, population 20, brief training of about
    # two epochs per individual). NOT MEASURED YET (no GPU here): its recipe follows the CPU fidelity figures, where
    # global masks carried mask signal and layerwise ones hardly any, and a gentler peak lr (0.05 vs 0.2) gave a more
    # reliable fitness at every budget and for both kinds of mask; and EcoNAS (Zhou et al. 2020): a reduced proxy
    # ranks better with more samples and fewer epochs, hence two epochs over the whole training split. Run
    # `evo-sparse fidelity --preset paper` on a GPU before trusting it; add --replicates if its ICC is below 0.7.
    "paper": {
        "model.depth": 16,
        "model.width": 8,  # WRN-16-8: 11M parameters dense, strongly overparameterized for CIFAR-10
        "search.sampling": "global",
        "train.train_images": 90_000,  # two epochs of the 45,000-image training split
        "train.batch_size": 128,
        "train.lr": 0.05,
    },
}


def preset(name: str) -> RunConfig:
    """The named preset as a RunConfig; ConfigError for an unknown name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return RunConfig(preset=name).updated(PRESETS[name])


def preset_changes(cfg: RunConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that change what is computed and differ from its preset (the defaults for a preset of
    another name): ``{"search.sparsity": 0.9}``."""
    base = preset(cfg.preset) if cfg.preset in PRESETS else RunConfig()
    mine, theirs = cfg.hashed_items(), base.hashed_items()
    now, before = flat_items(cfg), flat_items(base)
    return {k: now[k] for k in sorted(set(mine) | set(theirs)) if k != "preset" and now[k] != before[k]}


# The full-training recipe of each preset, each choice with its reason.
FINAL_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: two epochs over the 1,024 synthetic images, at the brief training's batch size and peak lr.
    "smoke": {"epochs": 2, "batch_size": 32, "lr": 0.2, "schedule": "onecycle", "warmup": 0.25},
    # A few epochs of real CIFAR-10 on a 2-core CPU: the brief training's one-cycle schedule, stretched.
    "cpu": {"epochs": 4, "batch_size": 64, "lr": 0.2, "schedule": "onecycle", "warmup": 0.15},
    # The WRN paper's 200 epochs: SGD + Nesterov, lr 0.1 x 0.2 at 60/120/160, wd 5e-4, batch 128 (the defaults).
    "paper": {},
}


def final_preset(name: str) -> FinalConfig:
    """The full-training recipe of the named preset; ConfigError for an unknown name."""
    if name not in FINAL_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(FINAL_PRESETS)}")
    return FinalConfig().updated(FINAL_PRESETS[name])
