"""The fitness record: what one evaluation of a mask gives, one typed value built in one place (``fitness_record``),
and how the records of a fitness's replicates merge (``combine``). Plain dicts at run time: JSON and DEAP carry them."""

from __future__ import annotations

import math
import statistics
from typing import TypedDict

OK, FAILED = "ok", "failed"
STATUSES = (OK, FAILED)


class FitnessRecord(TypedDict, total=False):
    """One evaluation: the mask's cost, how its brief training went, and its fitness (None when it failed)."""

    sparsity: float  # fraction of maskable nodes removed
    params: int
    macs: int  # multiply-accumulates per 32x32 image
    status: str  # OK or FAILED
    fitness: float | None  # validation accuracy after the brief training
    val_loss: float | None
    train_loss: float | None  # mean loss over the last quarter of the steps
    train_images: int
    batch_size: int  # the size used (halved once after running out of device memory)
    seconds: float
    reason: str | None  # why it failed
    replicate_fitness: list[float | None]  # with several replicates: each one's fitness
    fitness_sd: float | None  # their sample standard deviation


def fitness_record(
    *,
    sparsity: float,
    params: int,
    macs: int,
    train_images: int,
    batch_size: int,
    seconds: float,
    accuracy: float | None = None,
    val_loss: float | None = None,
    train_loss: float | None = None,
    reason: str | None = None,
) -> FitnessRecord:
    """The record of one training: OK with ``accuracy`` as its fitness, or FAILED with ``reason`` (given, or a
    validation accuracy or loss that is missing or not finite)."""
    if reason is None and not (
        accuracy is not None and val_loss is not None and math.isfinite(accuracy) and math.isfinite(val_loss)
    ):
        reason = f"validation accuracy {accuracy}, loss {val_loss}"
    ok = reason is None
    return {
        "sparsity": sparsity,
        "params": params,
        "macs": macs,
        "status": OK if ok else FAILED,
        "fitness": accuracy if ok else None,
        "val_loss": val_loss if ok else None,
        "train_loss": train_loss if ok else None,
        "train_images": train_images,
        "batch_size": batch_size,
        "seconds": seconds,
        "reason": reason,
    }


def combine(records: list[FitnessRecord]) -> FitnessRecord:
    """One fitness record from the records of its replicates (one record: itself, unchanged).

    Several: ``fitness``, ``val_loss`` and ``train_loss`` are their means, ``train_images`` and ``seconds`` their
    sums, ``replicate_fitness`` lists each replicate's fitness (None where it failed) and ``fitness_sd`` is their
    sample standard deviation. A fitness is failed when any replicate failed (a mean of the survivors would be
    biased); ``reason`` is the first failure's.
    """
    if len(records) == 1:
        return records[0]
    values = [r["fitness"] if r["status"] == OK else None for r in records]
    failed = [r for r in records if r["status"] != OK]
    merged = dict(records[0])
    merged |= {
        "train_images": sum(r["train_images"] for r in records),
        "batch_size": min(r["batch_size"] for r in records),
        "seconds": sum(r["seconds"] for r in records),
        "replicate_fitness": values,
    }
    if failed:
        return (
            merged
            | {k: None for k in ("fitness", "val_loss", "train_loss", "fitness_sd")}
            | {
                "status": FAILED,
                "reason": failed[0]["reason"],
            }
        )
    return merged | {
        "status": OK,
        "fitness": statistics.fmean(values),
        "val_loss": statistics.fmean(r["val_loss"] for r in records),
        "train_loss": statistics.fmean(r["train_loss"] for r in records),
        "fitness_sd": statistics.stdev(values),
        "reason": None,
    }
