"""Fitness: a node mask in, a record out (validation accuracy after a brief training, and how it went).

One ``Evaluator`` per run holds the parent's initial weights (drawn once from the run's seed), the batch stream
every individual trains on, and the validation images. An evaluation compacts the parent to the mask's kept
channels (a physically smaller WRN with the very same initial weights) and trains that, which gives the same
function as training the masked full-width network, at the cost of the sub-network. It knows no DEAP: records are
plain dicts, and a training that diverges gives a failed record, not an exception.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from evo_sparse import models
from evo_sparse.backends import CPU_THREADS
from evo_sparse.config import RunConfig
from evo_sparse.data import Splits
from evo_sparse.masks import Layout, Mask, compact_state
from evo_sparse.seeds import derive
from evo_sparse.train import BatchStream, NonFiniteLoss, evaluate, train

OK, FAILED = "ok", "failed"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parent_state(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The parent network's initial weights: a pure function of (depth, width, seed), built on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(cfg.seed, "parent-init"))
        return models.WideResNet(cfg.model.depth, cfg.model.width).state_dict()


class Evaluator:
    """Callable mapping a genome (flat 0/1 list) to a fitness record; see ``evaluate_mask``."""

    def __init__(self, cfg: RunConfig, splits: Splits, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(CPU_THREADS)  # fitness must not depend on the thread count (summation order)
        self.layout = Layout.from_units(models.units(cfg.model.depth, cfg.model.width))
        self.parent = parent_state(cfg)
        self.param_units = models.WideResNet(cfg.model.depth, cfg.model.width).param_units()
        t = cfg.train
        splits = splits.to(self.device)
        self.stream = BatchStream.draw(
            splits.train_x,
            splits.train_y,
            total=t.train_images,
            batch_size=t.batch_size,
            seed=derive(cfg.seed, "batches"),
        )
        n_val = t.val_images or len(splits.val_x)
        self.val_x, self.val_y = splits.val_x[:n_val], splits.val_y[:n_val]

    def __call__(self, genome) -> dict[str, Any]:
        return self.evaluate_mask(Mask(self.layout, tuple(genome)))

    def build(self, mask: Mask) -> models.WideResNet:
        """The compacted sub-network at the parent's initial weights, on this evaluator's device."""
        model = models.WideResNet(self.cfg.model.depth, self.cfg.model.width, mask.widths())
        model.load_state_dict(compact_state(self.parent, self.param_units, mask))
        return model.to(self.device)

    def evaluate_mask(self, mask: Mask) -> dict[str, Any]:
        """Train the sub-network briefly and measure validation accuracy.

        Returns ``{"status", "fitness", "val_loss", "train_loss", "train_images", "seconds", "sparsity", "params",
        "macs", "reason"}``; ``fitness`` is None and ``reason`` says why when the status is failed.
        """
        start = time.perf_counter()
        params, macs = models.cost(self.cfg.model.depth, self.cfg.model.width, mask.widths())
        record: dict[str, Any] = {"sparsity": mask.sparsity, "params": params, "macs": macs}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(derive(self.cfg.seed, "train"))  # any stray randomness is common to all individuals
            model = self.build(mask)
            try:
                result = train(model, self.stream, self.cfg.train)
                acc, val_loss = evaluate(model, self.val_x, self.val_y, self.cfg.train.eval_batch_size)
            except NonFiniteLoss as exc:
                return record | _failed(str(exc), start, self.stream.images)
        if not math.isfinite(val_loss):
            return record | _failed(f"validation loss is {val_loss}", start, result.images)
        return record | {
            "status": OK,
            "fitness": acc,
            "val_loss": val_loss,
            "train_loss": result.train_loss,
            "train_images": result.images,
            "seconds": time.perf_counter() - start,
            "reason": None,
        }


def _failed(reason: str, start: float, images: int) -> dict[str, Any]:
    return {
        "status": FAILED,
        "fitness": None,
        "val_loss": None,
        "train_loss": None,
        "train_images": images,
        "seconds": time.perf_counter() - start,
        "reason": reason,
    }
