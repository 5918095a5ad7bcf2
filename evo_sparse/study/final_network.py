"""One network's final-training record: trained (``train_network``) or lost with its worker (``lost_record``).

Both carry the same fields: the job's (``job_fields``), its early fitness as the search measured it and under the
replicate the search never saw (``heldout_replicate``), then the curves and test accuracy of ``training.full``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.seeds import derive
from evo_sparse.foundations.storage import SCHEMA_VERSION
from evo_sparse.models.masks import Mask
from evo_sparse.models.registry import architecture


def job_fields(job, mask: Mask) -> dict[str, Any]:
    """What a final-training record says of its job (a ``final.Job``) before any training: which network, its cost."""
    cfg = job.cfg
    params, macs = architecture(cfg.model).cost(mask.widths())
    return {
        "schema": SCHEMA_VERSION,
        "kind": job.kind,
        "index": job.index,
        "seed": cfg.seed,
        "train_seed": job.train_seed,
        "sparsity": job.sparsity,
        "node_sparsity": mask.sparsity,
        "algorithm": None if job.kind == "dense" else cfg.search.algorithm,
        "params": params,
        "flops": macs,  # multiply-accumulates per 32x32 image, the pruning literature's "FLOPs"
    }


def heldout_replicate(cfg: RunConfig) -> int:
    """The replicate a run's search never trained under: it used replicates 0 .. R - 1 (``--replicates R``)."""
    return cfg.train.replicates


def heldout_evaluator(cfg: RunConfig, splits, device: torch.device | str = "cpu"):
    """An ``Evaluator`` of ``cfg``'s fitness under only its held-out replicate (``heldout_replicate``)."""
    from evo_sparse.training.fitness import Evaluator

    return Evaluator(cfg, splits, device, replicates=[heldout_replicate(cfg)])


def _fitness(record: dict[str, Any]) -> float | None:
    return record.get("fitness") if record.get("status") == "ok" else None


def train_network(job, evaluator, splits, heldout=None) -> dict[str, Any]:
    """Fully train ``job``'s network; its record (``status`` failed with a ``reason`` if the loss diverged): the job's
    fields around what ``training.full.train_full`` returns.

    ``early_fitness`` is the search's record (found masks) or ``evaluator``'s measure; ``early_fitness_heldout`` is
    ``heldout``'s (default: ``heldout_evaluator`` of the job's config), None where that brief training failed.
    """
    from evo_sparse.training.full import train_full
    from evo_sparse.training.schedules import Recipe

    start = time.perf_counter()
    f, cfg = job.final, job.cfg
    mask = Mask.decode(evaluator.layout, job.mask)
    early = job.early or evaluator.evaluate_mask(mask)
    if heldout is None:
        heldout = heldout_evaluator(cfg, splits, evaluator.device)
    early_heldout = heldout.evaluate_mask(mask)
    record = job_fields(job, mask) | {
        "early_fitness": _fitness(early),
        "early_from": "search" if job.early else "evaluator",
        "early_fitness_heldout": _fitness(early_heldout),  # a replicate the search never saw: no winner's curse
        "early_heldout_replicate": heldout_replicate(cfg),
        "epochs": f.epochs,
        "recipe": f.final_hash(),
        "mask": job.mask,
        "source": job.source,
        "device": str(evaluator.device),
    }
    device = evaluator.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive(cfg.seed, f"final-train:{job.train_seed}"))
        model = evaluator.build(mask)
        trained = train_full(
            model,
            splits,
            Recipe.full(f),
            epochs=f.epochs,
            data_seed=lambda epoch: derive(cfg.seed, f"final-data:{job.train_seed}:{epoch}"),
            eval_batch_size=f.eval_batch_size,
        )
    return record | trained | {"seconds": time.perf_counter() - start}


def lost_record(job, reason: str) -> dict[str, Any]:
    """The failed record of a job whose worker died at every attempt: the fields of ``train_network``'s record, the
    job's own filled in, nothing measured, and ``reason`` saying how its worker died."""
    cfg, early = job.cfg, job.early
    mask = Mask.decode(architecture(cfg.model).layout, job.mask)
    return job_fields(job, mask) | {
        "early_fitness": early.get("fitness") if early and early.get("status") == "ok" else None,
        "early_from": "search" if early else None,
        "early_fitness_heldout": None,
        "early_heldout_replicate": heldout_replicate(cfg),
        "epochs": job.final.epochs,
        "recipe": job.final.final_hash(),
        "mask": job.mask,
        "source": job.source,
        "device": None,
        "val_acc": [],
        "val_loss": [],
        "train_loss": [],
        "epoch_seconds": [],
        "status": "failed",
        "reason": reason,
        "final_val_acc": None,
        "best_val_acc": None,
        "final_test_acc": None,
        "test_loss": None,
        "train_images": None,
        "seconds": 0.0,
    }
