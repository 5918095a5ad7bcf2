"""Fitness: a node mask in, a record out (validation accuracy after a brief training, and how it went).

One ``Evaluator`` per run holds the parent's initial weights (drawn once from the run's seed), the batch stream
every individual trains on, and the validation images. An evaluation compacts the parent to the mask's kept
channels (a physically smaller WRN with the very same initial weights) and trains that, which gives the same
function as training the masked full-width network, at the cost of the sub-network. It knows no DEAP: records are
plain dicts, and an evaluation that fails (diverges, raises, runs out of memory twice) gives a failed record, not an
exception (see ``Evaluator.evaluate_mask``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from evo_sparse.foundations import faults
from evo_sparse.foundations.config import RunConfig, TrainConfig, pack_size
from evo_sparse.foundations.devices import CPU_THREADS
from evo_sparse.foundations.errors import EvoSparseError
from evo_sparse.foundations.seeds import derive
from evo_sparse.models.masks import Mask
from evo_sparse.models.registry import architecture
from evo_sparse.training.data import Splits
from evo_sparse.training.records import FitnessRecord, combine, fitness_record
from evo_sparse.training.trainer import BatchStream, NonFiniteLoss, evaluate, train


def parent_state(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The parent network's initial weights: a pure function of (depth, width, seed), built on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(cfg.seed, "parent-init"))
        return architecture(cfg.model).build().state_dict()


@dataclass(frozen=True)
class Replicate:
    """What one re-measurement of a fitness changes, and nothing else: the training batches (order, crops, flips)
    and the seed of any stray randomness. Replicate 0 is the one every run used before replicates existed; the
    parent weights, the masks and the validation images are the same in every replicate."""

    index: int
    stream: BatchStream
    train_seed: int

    @classmethod
    def draw(cls, cfg: RunConfig, splits: Splits, index: int) -> Replicate:
        t = cfg.train
        stream = BatchStream.draw(
            splits.train_x,
            splits.train_y,
            total=t.train_images,
            batch_size=t.batch_size,
            seed=replicate_seed(cfg.seed, "batches", index),
        )
        return cls(index, stream, replicate_seed(cfg.seed, "train", index))


def replicate_seed(seed: int, purpose: str, replicate: int) -> int:
    """The seed of ``purpose`` in replicate ``replicate``; replicate 0 keeps the seed runs have always used."""
    return derive(seed, purpose if replicate == 0 else f"{purpose}/replicate-{replicate}")


class Evaluator:
    """Callable mapping a genome (flat 0/1 list) to a fitness record; see ``evaluate_mask``.

    With ``--replicates R`` (or the explicit ``replicates`` indices) a fitness is the mean of R trainings, one per
    ``Replicate``; ``combine`` says how their records merge.

    A fitness value is a pure function of (config, seed, mask), and with ``--pack`` P > 1 of the mask's slot too: a run
    trains the j-th evaluation of a generation as member ``j % P`` of a population of exactly P (filled with copies
    when fewer are at hand), because the batched kernels round by population size and slot, not by the other members.
    """

    def __init__(
        self,
        cfg: RunConfig,
        splits: Splits,
        device: torch.device | str = "cpu",
        *,
        replicates: Sequence[int] | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(CPU_THREADS)  # fitness must not depend on the thread count (summation order)
        self.arch = architecture(cfg.model)
        self.layout = self.arch.layout
        self.parent = parent_state(cfg)
        t = cfg.train
        splits = splits.to(self.device)
        indices = range(t.replicates) if replicates is None else replicates
        self.replicates = [Replicate.draw(cfg, splits, r) for r in indices]
        self.val_x, self.val_y = splits.validation(t.val_images)
        self.pack = pack_size(cfg) if self.arch.batches else 1  # a network without a batched form: one at a time
        self._splits = splits  # on the device: other training lengths draw their batches from it
        self._lengths: dict[int, tuple[TrainConfig, list[Replicate]]] = {}

    def __call__(self, genome) -> FitnessRecord:
        return self.evaluate_mask(Mask(self.layout, tuple(genome)))

    def build(self, mask: Mask):
        """The compacted sub-network at the parent's initial weights, on this evaluator's device."""
        return self.arch.sub_network(self.parent, mask).to(self.device)

    def evaluate_mask(self, mask: Mask) -> FitnessRecord:
        """The fitness record of ``mask`` by this run's procedure: ``evaluate_alone``, or with ``--pack`` P > 1 as
        member 0 of a population of P (``population.evaluate_masks``)."""
        return self.evaluate_masks([mask])[0]

    def evaluate_masks(self, masks: list[Mask | None]) -> list[FitnessRecord | None]:
        """``evaluate_mask`` of each mask, in order (None for None); with ``--pack`` P > 1 mask ``j`` trains as member
        ``j % P`` of the population ``masks[j - j % P : ...]`` (a member's value depends on its slot). Each replicate
        trains every mask before the next replicate starts; their records are merged by ``combine``."""
        per_replicate = [self._evaluate_replicate(masks, rep) for rep in self.replicates]
        return [None if m is None else combine([r[j] for r in per_replicate]) for j, m in enumerate(masks)]

    def _evaluate_replicate(self, masks: list[Mask | None], rep: Replicate) -> list[FitnessRecord | None]:
        if self.pack == 1:
            return [None if m is None else self.evaluate_alone(m, rep) for m in masks]
        from evo_sparse.training.population import evaluate_masks

        return evaluate_masks(self, masks, chunk=self.pack, slots=True, replicate=rep)

    def evaluate_genomes(self, items) -> list[FitnessRecord | None]:
        """``evaluate_masks`` of flat 0/1 lists (None stays None); an item ``(genome, train_images)`` is scored alone
        by a training of that many images (an ask/tell plug-in's other fidelity), its slot left empty in the pack."""
        split = [None if item is None else split_item(item) for item in items]
        masks = [None if s is None or s[1] is not None else Mask(self.layout, tuple(s[0])) for s in split]
        records = self.evaluate_masks(masks) if any(m is not None for m in masks) else [None] * len(masks)
        for j, s in enumerate(split):
            if s is not None and s[1] is not None:
                records[j] = self.evaluate_at(Mask(self.layout, tuple(s[0])), s[1])
        return records

    def evaluate_at(self, mask: Mask, train_images: int) -> FitnessRecord:
        """``evaluate_alone`` with trainings of ``train_images`` images (the same replicates' seeds, fewer or more
        batches of the same kind), alone whatever ``--pack`` says."""
        if train_images == self.cfg.train.train_images:
            return self.evaluate_alone(mask)
        if train_images not in self._lengths:
            cfg = self.cfg.updated({"train.train_images": train_images})
            reps = [Replicate.draw(cfg, self._splits, r.index) for r in self.replicates]
            self._lengths[train_images] = (cfg.train, reps)
        train_cfg, reps = self._lengths[train_images]
        return combine([self.evaluate_alone(mask, rep, train_cfg) for rep in reps])

    def evaluate_alone(
        self, mask: Mask, replicate: Replicate | None = None, train_cfg: TrainConfig | None = None
    ) -> FitnessRecord:
        """Train the sub-network briefly, on its own, under ``replicate`` (default: every replicate of this evaluator,
        merged by ``combine``), and measure validation accuracy.

        Returns ``{"status", "fitness", "val_loss", "train_loss", "train_images", "batch_size", "seconds", "sparsity",
        "params", "macs", "reason"}``. Failures are records, not exceptions: a NaN/inf loss or accuracy, or any
        Exception while building, training or scoring the network, gives status "failed", fitness None and the
        ``reason``. When the device runs out of memory the evaluation is tried once more at half the batch size (twice
        the steps over the same images, which changes the fitness a little: ``batch_size`` records the size used).
        KeyboardInterrupt and EvoSparseError (a setting or the data is wrong, so every evaluation would fail alike)
        are raised, not recorded.
        """
        if replicate is None:
            return combine([self.evaluate_alone(mask, rep) for rep in self.replicates])
        start = time.perf_counter()
        params, macs = self.arch.cost(mask.widths())
        record = partial(fitness_record, sparsity=mask.sparsity, params=params, macs=macs)
        fault = faults.fitness_fault(self.cfg.seed, mask.encode())  # None unless a test injects failures
        train_cfg = train_cfg or self.cfg.train
        full = batch_size = train_cfg.batch_size
        try:
            scored = self._attempt(mask, replicate.stream, replicate.train_seed, train_cfg, fault)
            if scored is None and full > 1:
                batch_size = full // 2
                stream, train_cfg = self._rebatched(replicate.stream, batch_size, train_cfg)
                scored = self._attempt(mask, stream, replicate.train_seed, train_cfg, None if fault == "oom" else fault)
            if scored is None:
                reason = f"out of device memory at batch size {full}" + (f" and {batch_size}" if full > 1 else "")
                return record(reason=reason, train_images=0, batch_size=batch_size, seconds=_since(start))
            acc, val_loss, result = scored
        except NonFiniteLoss as exc:
            images = replicate.stream.images
            return record(reason=str(exc), train_images=images, batch_size=batch_size, seconds=_since(start))
        except EvoSparseError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
            return record(reason=reason, train_images=0, batch_size=batch_size, seconds=_since(start))
        return record(
            accuracy=acc,
            val_loss=val_loss,
            train_loss=result.train_loss,
            train_images=result.images,
            batch_size=batch_size,
            seconds=_since(start),
        )

    def _attempt(self, mask: Mask, stream: BatchStream, train_seed: int, train_cfg: TrainConfig, fault: str | None):
        """(accuracy, validation loss, TrainResult), or None when the device ran out of memory (then freed)."""
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(train_seed)  # any stray randomness is common to all individuals of a replicate
                if fault == "fail":
                    raise RuntimeError(f"injected failure ({faults.ENV})")
                if fault == "oom":
                    raise torch.cuda.OutOfMemoryError(f"injected: out of device memory ({faults.ENV})")
                model = self.build(mask)
                result = train(model, stream, train_cfg)
                acc, val_loss = evaluate(model, self.val_x, self.val_y, train_cfg.eval_batch_size)
            return (math.nan if fault == "nan" else acc), val_loss, result
        except torch.cuda.OutOfMemoryError:
            pass
        if self.device.type == "cuda":  # outside the except block, so the failed attempt's tensors are released
            torch.cuda.empty_cache()
        return None

    def _rebatched(self, stream: BatchStream, batch_size: int, t: TrainConfig) -> tuple[BatchStream, TrainConfig]:
        """The same images in the same order, in batches of ``batch_size``, with the config to train on them."""
        x, y = stream.x.flatten(0, 1), stream.y.flatten(0, 1)
        n = len(y) // batch_size * batch_size
        stream = BatchStream(x[:n].view(-1, batch_size, *x.shape[1:]), y[:n].view(-1, batch_size))
        return stream, dataclasses.replace(t, batch_size=batch_size, eval_batch_size=max(1, t.eval_batch_size // 2))


def split_item(item) -> tuple[list[int], int | None]:
    """(genome, training length or None) of a search task's item: a genome, or ``(genome, train_images)``."""
    if isinstance(item, tuple):
        return list(item[0]), int(item[1])
    return item, None


def lost_record(cfg: RunConfig, genome, reason: str) -> FitnessRecord:
    """The failed record of an evaluation that never finished because its worker process died at every attempt
    (``backends``): the same fields as ``Evaluator.evaluate_mask``'s, with ``reason``."""
    arch = architecture(cfg.model)
    mask = Mask(arch.layout, tuple(genome))
    params, macs = arch.cost(mask.widths())
    return fitness_record(
        sparsity=mask.sparsity,
        params=params,
        macs=macs,
        train_images=0,
        batch_size=cfg.train.batch_size,
        seconds=0.0,
        reason=reason,
    )


def _since(start: float) -> float:
    return time.perf_counter() - start
