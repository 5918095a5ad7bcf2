"""Fitness benchmark: seconds per individual and training images/s for three ways of scoring masks.

(a) masked full-width network, one at a time, fed by a standard ``DataLoader`` with per-image torchvision
    transforms (what a typical user writes);
(b) compacted sub-network, one at a time, data resident on the device (``Evaluator.evaluate_mask``);
(c) compacted, a whole population: worker processes (CPU) and/or batched training (``population``).

All paths train the same recipe on the same number of images and measure validation accuracy on the same images;
they run interleaved in one process (repeat by repeat, sparsity by sparsity), so machine noise hits them alike.
Ratios are speed-ups: ``b_over_a@S`` = seconds(a) / seconds(b) at sparsity S, ``c_over_b@S`` = seconds(b) / seconds(c).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evo_sparse.execution.process import ProcessMap
from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.devices import CPU_THREADS, cpu_cores
from evo_sparse.models.masks import Layout, Mask, sample
from evo_sparse.models.registry import architecture
from evo_sparse.training.data import MEAN, STD, Splits
from evo_sparse.training.fitness import Evaluator, parent_state
from evo_sparse.training.trainer import evaluate, lr_at, make_optimizer


def masked_dataloader_fitness(cfg: RunConfig, splits: Splits, mask: Mask, device: torch.device) -> float:
    """Path (a): the gated full-width parent trained from a ``DataLoader`` with per-image transforms."""
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    class Images(Dataset):
        def __init__(self, x, y, transform):
            self.x, self.y, self.transform = x.permute(0, 2, 3, 1).cpu().numpy(), y.cpu().numpy(), transform

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.x[i])), int(self.y[i])

    t = cfg.train
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = DataLoader(Images(splits.train_x, splits.train_y, transform), batch_size=t.batch_size, shuffle=True)
    model = architecture(cfg.model).build()
    model.load_state_dict(parent_state(cfg))
    model.to(device)
    model.set_gates(mask.gates(torch.zeros((), device=device)))
    opt = make_optimizer(model, t)
    steps = t.train_images // t.batch_size
    model.train()
    step = 0
    while step < steps:
        for x, y in loader:
            if step == steps:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, t)
            loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=t.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return evaluate(model, *splits.validation(t.val_images), t.eval_batch_size)[0]


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def population_paths(cfg: RunConfig, evaluator: Evaluator, device: torch.device, pack: int) -> dict[str, Callable]:
    """The population-level ways available here: name -> function(list of masks) -> list of fitness values.

    ``batched``: this process, populations of ``pack`` (all of them on a GPU); ``workers``: one worker process per
    core, one network at a time each; ``workers_packed``: the same workers, ``--pack pack`` (as a run does it)."""
    from evo_sparse.training.population import evaluate_masks

    chunk = pack if device.type == "cpu" else None
    paths: dict[str, Callable] = {"batched": lambda ms: [r["fitness"] for r in evaluate_masks(evaluator, ms, chunk)]}
    if device.type == "cpu" and cpu_cores() > 1:
        for name, k in (("workers", 1), ("workers_packed", pack)):
            if name == "workers_packed" and pack == 1:
                continue
            pool = ProcessMap(cfg.updated({"train.pack": k}), cpu_cores())
            paths[name] = lambda ms, pool=pool: [r["fitness"] for r in pool(None, [list(m.bits) for m in ms])]
            paths[name].close = pool.close  # type: ignore[attr-defined]
    return paths


def run_benchmark(
    cfg: RunConfig,
    splits: Splits,
    *,
    sparsities=(0.0, 0.5, 0.8, 0.9),
    population: int = 20,
    repeats: int = 3,
    pack: int = 4,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure paths a, b and c at each sparsity; return per-path medians, the ratios and the environment."""
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    evaluator = Evaluator(cfg, splits, dev)
    layout: Layout = evaluator.layout
    rng = random.Random(0)
    masks = {s: [Mask(layout, tuple(sample(layout, s, rng=rng))) for _ in range(population)] for s in sparsities}
    pops = population_paths(cfg, evaluator, dev, pack)
    times: dict[tuple[str, float], list[float]] = {}
    fitness: dict[tuple[str, float], list[float]] = {}
    try:
        for fn in pops.values():  # warm-up: worker start-up and first-call costs stay out of the timings
            fn(masks[sparsities[-1]][:2])
        for r in range(repeats):
            for s in sparsities:
                m0 = masks[s][r % population]
                measured = {
                    "a": lambda m0=m0: masked_dataloader_fitness(cfg, splits, m0, dev),
                    "b": lambda m0=m0: evaluator.evaluate_mask(m0)["fitness"],
                }
                for name, fn in pops.items():
                    measured[f"c_{name}"] = lambda fn=fn, s=s: fn(masks[s])
                for path, fn in measured.items():
                    seconds, out = _timed(fn, dev)
                    per = seconds / (population if path.startswith("c_") else 1)
                    times.setdefault((path, s), []).append(per)
                    if path.startswith("c_"):
                        fitness[(path, s)] = out
                    log(f"repeat {r + 1}/{repeats} sparsity {s}: {path} {per:.2f} s/individual")
    finally:
        for fn in pops.values():
            getattr(fn, "close", lambda: None)()
    images = cfg.train.train_images // cfg.train.batch_size * cfg.train.batch_size
    macs = {s: statistics.mean(architecture(cfg.model).cost(m.widths())[1] for m in masks[s]) for s in sparsities}
    needed = {s: 6 * macs[s] * images + 2 * macs[s] * len(evaluator.val_x) for s in sparsities}
    med = {k: statistics.median(v) for k, v in times.items()}
    paths = sorted({p for p, _ in med})
    best_c = {
        s: min((p for p in paths if p.startswith("c_")), key=lambda p: med[(p, s)], default=None) for s in sparsities
    }
    ratios = {}
    for s in sparsities:
        ratios[f"b_over_a@{s}"] = med[("a", s)] / med[("b", s)]
        if best_c[s]:
            ratios[f"c_over_b@{s}"] = med[("b", s)] / med[(best_c[s], s)]
    b_fitness = {s: [evaluator.evaluate_mask(m)["fitness"] for m in masks[s][:4]] for s in sparsities}
    agreement = {f"{p}@{s}": float(np.max(np.abs(np.array(fitness[(p, s)][:4]) - b_fitness[s]))) for p, s in fitness}
    return {
        "model": architecture(cfg.model).label,
        "train_images": images,
        "val_images": len(evaluator.val_x),
        "population": population,
        "pack": pack,
        "repeats": repeats,
        "device": str(dev),
        "cpu_cores": cpu_cores(),
        "torch": torch.__version__,
        "data": splits.description,
        "seconds_per_individual": {f"{p}@{s}": med[(p, s)] for p, s in med},
        "images_per_second": {f"{p}@{s}": images / med[(p, s)] for p, s in med},
        # FLOPs the compacted networks really need (train: 6 per MAC per image; validation: 2), per second.
        "achieved_tflops": {f"{p}@{s}": needed[s] / med[(p, s)] / 1e12 for p, s in med if p != "a"},
        "best_population_path": {str(s): best_c[s] for s in sparsities},
        "ratios": ratios,
        "max_fitness_diff_vs_b": agreement,
    }


def format_table(result: dict[str, Any]) -> str:
    """The medians as a Markdown table, one row per sparsity."""
    sparsities = sorted({float(k.split("@")[1]) for k in result["seconds_per_individual"]})
    paths = sorted({k.split("@")[0] for k in result["seconds_per_individual"]})
    head = "| sparsity | " + " | ".join(f"{p} s/ind (img/s)" for p in paths) + " | b over a | c over b |"
    lines = [head, "|" + " --- |" * (len(paths) + 3)]
    for s in sparsities:
        cells = [
            f"{result['seconds_per_individual'][f'{p}@{s}']:.2f} ({result['images_per_second'][f'{p}@{s}']:.0f})"
            for p in paths
        ]
        cb = result["ratios"].get(f"c_over_b@{s}")
        lines.append(
            f"| {s} | "
            + " | ".join(cells)
            + f" | {result['ratios'][f'b_over_a@{s}']:.1f}x | "
            + (f"{cb:.2f}x ({result['best_population_path'][str(s)]})" if cb else "-")
            + " |"
        )
    return "\n".join(lines)


def bench_config(base: RunConfig, train_images: int, val_images: int) -> RunConfig:
    """``base`` with the benchmark's training budget, one network at a time (path b; path c sets its own pack)."""
    return replace(base, train=replace(base.train, train_images=train_images, val_images=val_images, pack=1))
