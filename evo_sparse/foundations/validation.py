"""Which values the settings allow: ``RunConfig.validate`` and ``FinalConfig.validate`` run these checks, each failing
with a ConfigError that names the option and what to use instead."""

from __future__ import annotations

from evo_sparse.foundations.config import SCHEDULES, FinalConfig, RunConfig, flat_items, run_fields
from evo_sparse.foundations.errors import ConfigError


def check_run(cfg: RunConfig) -> None:
    """ConfigError naming the first bad setting of ``cfg``."""
    fields = run_fields()
    for key, value in flat_items(cfg).items():
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"--{_opt(key)} must be one of {', '.join(choices)}, not {value!r}")
    s, m, t = cfg.search, cfg.model, cfg.train
    # the depth is the model's to check (models.registry): each network has its own
    _check(m.width >= 1, "width", f"must be at least 1, not {m.width}")
    _check(0 <= cfg.seed < 2**32, "seed", f"must be an integer in 0..2**32-1 (numpy's range), not {cfg.seed}")
    _check(s.population >= 2, "pop", f"must be at least 2, not {s.population}")
    _check(0 <= s.keep < s.population, "keep", f"must be in 1..pop-1 = 1..{s.population - 1} (0 = pop/2), not {s.keep}")
    _check(s.survivors >= 1, "keep", "leaves no survivors; use --pop of at least 2")
    _check(s.generations >= 1, "generations", f"must be at least 1, not {s.generations}")
    _check(0.0 <= s.sparsity < 1.0, "sparsity", f"must be in [0, 1) (fraction of nodes removed), not {s.sparsity}")
    _check(0.0 <= s.cxpb <= 1.0 and 0.0 <= s.mutpb <= 1.0, "cxpb", "and --mutpb must be probabilities in [0, 1]")
    _check(0.0 <= s.swap_prob <= 1.0, "swap-prob", f"must be in [0, 1], not {s.swap_prob}")
    _check(bool(s.algorithm.strip()), "algorithm", "must name an algorithm; evo-sparse algorithms lists them")
    _check(s.budget >= 0, "budget", f"must be 0 (the generations decide) or more trainings, not {s.budget}")
    _check(s.tournament >= 1, "tournament", f"must be at least 1, not {s.tournament}")
    _check(0.0 <= s.max_failed_share <= 1.0, "max-failed-share", f"must be in [0, 1], not {s.max_failed_share}")
    _check(t.train_images >= t.batch_size >= 1, "train-images", f"must be at least --batch-size ({t.batch_size})")
    _check(t.lr > 0 and 0 <= t.warmup < 1, "lr", "must be positive (and --warmup in [0, 1))")
    _check(cfg.workers >= 0, "workers", f"must be 0 (one per core) or more, not {cfg.workers}")
    _check(
        cfg.backend != "local" or cfg.workers <= 1,
        "workers",
        f"{cfg.workers} needs --backend process or ray (--backend local evaluates in this process)",
    )
    _check(cfg.backend == "ray" or not cfg.address, "address", "is for --backend ray; add --backend ray")
    _check(0 < cfg.gpus_per_task <= 1, "gpus-per-task", f"must be in (0, 1] (of one GPU), not {cfg.gpus_per_task}")
    _check(cfg.backend == "ray" or cfg.gpus_per_task == 1, "gpus-per-task", "is for --backend ray; add --backend ray")
    _check(cfg.max_retries >= 0, "max-retries", f"must be 0 or more, not {cfg.max_retries}")
    _check(cfg.eval_timeout >= 0, "eval-timeout", f"must be 0 (automatic) or more seconds, not {cfg.eval_timeout}")
    _check(t.val_images >= 0 and t.eval_batch_size >= 1, "val-images", "must be 0 (all) or positive")
    _check(t.replicates >= 1, "replicates", f"must be at least 1 (1 = one training per fitness), not {t.replicates}")
    _check(t.pack >= 1, "pack", f"must be at least 1 (1 = one network at a time), not {t.pack}")
    _check(
        0 < cfg.data.val_size < 50_000 and cfg.data.val_size % 10 == 0,
        "val-size",
        f"must be a positive multiple of 10 below 50000, not {cfg.data.val_size}",
    )


def check_final(cfg: FinalConfig) -> None:
    """ConfigError naming the first bad setting of ``cfg``."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {cfg.schedule!r}")
    _check(cfg.epochs >= 1, "epochs", f"must be at least 1, not {cfg.epochs}")
    _check(cfg.batch_size >= 1, "final-batch-size", f"must be at least 1, not {cfg.batch_size}")
    _check(cfg.lr > 0, "final-lr", f"must be positive, not {cfg.lr}")
    _check(0 <= cfg.warmup < 1, "final-warmup", f"must be in [0, 1), not {cfg.warmup}")
    _check(0 < cfg.gamma <= 1, "gamma", f"must be in (0, 1], not {cfg.gamma}")
    _check(cfg.weight_decay >= 0, "final-weight-decay", f"must be 0 or more, not {cfg.weight_decay}")
    _check(0 <= cfg.label_smoothing < 1, "final-label-smoothing", f"must be in [0, 1), not {cfg.label_smoothing}")
    _check(cfg.eval_batch_size >= 1, "eval-batch-size", f"must be at least 1, not {cfg.eval_batch_size}")
    _check(cfg.masks >= 0, "final-masks", f"must be 0 (the run's --keep) or more, not {cfg.masks}")
    _check(cfg.seeds >= 1, "final-seeds", f"must be at least 1, not {cfg.seeds}")


def _check(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"--{option} {message}")


def _opt(key: str) -> str:
    return key.split(".")[-1].replace("_", "-")
