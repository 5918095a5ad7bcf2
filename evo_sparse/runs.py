"""Run folders: where a run's files live, how a search is started, checkpointed and resumed, and its summary.

A run folder is a function of the config: ``<runs_dir>/<algorithm>_<hash of non-default settings>/seed_<seed>/``.
It holds (names spelled once, in ``RunPaths``):

- ``config.json``: the full config; a rerun with other settings never lands in the same folder.
- ``environment.json``: which data, device and versions computed the results.
- ``evaluations.jsonl``: one line per evaluation, written as each finishes (mask, fitness, status, seconds, ...).
- ``checkpoint.json``: after every generation, the next generation's index, population, hall of fame, logbook and
  every RNG state. Running the same command again resumes from it; evaluations of an unfinished generation that the
  journal already holds are reused, not recomputed; a finished run is left as it is.
"""

from __future__ import annotations

import base64
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deap import creator, tools

from evo_sparse import __version__, models
from evo_sparse.config import RunConfig
from evo_sparse.errors import RunStateError
from evo_sparse.masks import Layout, Mask
from evo_sparse.progress import Progress
from evo_sparse.search import Hooks, SearchState, assign, evolve, make_toolbox
from evo_sparse.seeds import seed_everything
from evo_sparse.storage import SCHEMA_VERSION, append_jsonl, read_json, read_jsonl, write_json


@dataclass(frozen=True)
class RunPaths:
    """Every file name of a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"


def run_folder(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / f"{cfg.search.algorithm}_{cfg.run_hash()}" / f"seed_{cfg.seed}"


def layout_of(cfg: RunConfig) -> Layout:
    return Layout.from_units(models.units(cfg.model.depth, cfg.model.width))


# --- checkpoint: plain JSON, RNG states included ------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def save_checkpoint(paths: RunPaths, state: SearchState, layout: Layout, evaluations: int) -> None:
    """Write the state after a generation; ``evaluations`` is the journal's length at that point."""

    def entry(ind) -> dict[str, Any]:
        return {"mask": Mask(layout, tuple(ind)).encode(), "record": ind.record}

    write_json(
        paths.checkpoint,
        {
            "schema": SCHEMA_VERSION,
            "next_generation": state.generation,
            "evaluations": evaluations,
            "population": [entry(ind) for ind in state.population],
            "hall_of_fame": [entry(ind) for ind in state.hall_of_fame],
            "logbook": list(state.logbook),
            "rng": _rng_state(),
        },
    )


def load_checkpoint(paths: RunPaths, layout: Layout, hof_size: int) -> tuple[SearchState, int]:
    """The saved search state (RNG states restored) and the number of evaluations it covers."""
    ckpt = read_json(paths.checkpoint, "checkpoint")
    if ckpt.get("schema") != SCHEMA_VERSION:
        raise RunStateError(
            f"checkpoint {paths.checkpoint} has schema {ckpt.get('schema')}, this version reads "
            f"{SCHEMA_VERSION}; run it with the version that wrote it, or use a new --runs-dir"
        )

    def individual(entry):
        ind = creator.MaskIndividual(Mask.decode(layout, entry["mask"]).bits)
        assign(ind, entry["record"])
        return ind

    state = SearchState(generation=ckpt["next_generation"], population=[individual(e) for e in ckpt["population"]])
    state.hall_of_fame = tools.HallOfFame(hof_size)
    for ind in map(individual, ckpt["hall_of_fame"]):  # stored best first; keys are kept in ascending order
        state.hall_of_fame.items.append(ind)
        state.hall_of_fame.keys.insert(0, ind.fitness)
    for entry in ckpt["logbook"]:
        state.logbook.record(**entry)
    _set_rng_state(ckpt["rng"])
    return state, ckpt["evaluations"]


# --- executing a run ----------------------------------------------------------------------------------------------


def check_config(paths: RunPaths, cfg: RunConfig) -> bool:
    """True if the folder already holds this config; RunStateError if it holds a different one."""
    if not paths.config.exists():
        return False
    saved = RunConfig.from_dict(read_json(paths.config, "run config"))
    if saved.hashed_items() != cfg.hashed_items():
        diff = sorted(set(saved.hashed_items().items()) ^ set(cfg.hashed_items().items()))
        raise RunStateError(f"{paths.config} was written by other settings ({diff[:3]}); use another --runs-dir")
    return True


def is_finished(paths: RunPaths, cfg: RunConfig) -> bool:
    return (
        paths.checkpoint.exists()
        and read_json(paths.checkpoint, "checkpoint")["next_generation"] >= cfg.search.generations
    )


def load_splits(cfg: RunConfig, log: Callable[[str], None]):
    from evo_sparse import data

    if cfg.data.dataset == "synthetic":
        return data.make_synthetic(
            seed=cfg.data.split_seed,
            train_size=cfg.data.synthetic_train,
            val_size=cfg.data.val_size,
            test_size=cfg.data.val_size,
        )
    return data.load_cifar10(cfg.data.path, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed, log=log)


class Journal:
    """The evaluations file: appends each finished evaluation, and hands back those a resumed generation already has.

    Rows after the checkpoint's count belong to the generation that was running when the run stopped; they are
    reused when the same individual (same generation, position and mask) comes up again, and not written twice.
    """

    def __init__(self, path: Path, layout: Layout, checkpointed: int):
        self.path, self.layout = path, layout
        rows = read_jsonl(path)
        self.rows = len(rows)
        self.pending = {(r["gen"], r["index"]): r for r in rows[checkpointed:]}
        self.gen = 0

    def wrap(self, inner_map: Callable) -> Callable:
        """A ``toolbox.map`` that takes pending rows first and evaluates the rest with ``inner_map``, in order."""

        def journaled_map(func, individuals):
            keys = [Mask(self.layout, tuple(ind)).encode() for ind in individuals]
            reuse = {
                i: row for i, k in enumerate(keys) if (row := self.pending.get((self.gen, i), {})).get("mask") == k
            }
            fresh = iter(inner_map(func, [ind for i, ind in enumerate(individuals) if i not in reuse]))
            for i, key in enumerate(keys):
                yield dict(reuse[i], journaled=True) if i in reuse else dict(next(fresh), mask=key)

        return journaled_map

    def record(self, gen: int, index: int, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Append ``record`` unless it came from the journal; return (the record as individuals keep it, appended)."""
        reused = record.pop("journaled", False)
        if not reused:
            append_jsonl(self.path, [{"gen": gen, "index": index} | record])
            self.rows += 1
        return {k: v for k, v in record.items() if k not in ("gen", "index", "mask")}, not reused


def execute(
    cfg: RunConfig,
    *,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
    customize: Callable[[Any], None] | None = None,
) -> Path:
    """Run (or resume, or skip when finished) the search ``cfg`` describes; return its folder.

    ``customize(toolbox)`` may register other DEAP operators (``mate``, ``mutate``, ``select``, ``select_parents``)
    before the loop starts. The run folder does not know about them: give such runs their own ``runs_dir``.
    """
    from evo_sparse.backends import ProcessMap, worker_count
    from evo_sparse.fitness import Evaluator, resolve_device

    cfg.validate()
    paths = RunPaths(run_folder(cfg))
    known = check_config(paths, cfg)
    if known and is_finished(paths, cfg):
        log(f"run already finished: {paths.root}")
        return paths.root
    device = resolve_device(cfg.device)
    splits = load_splits(cfg, log)  # also decodes and caches the data once, before any worker starts
    workers = worker_count(cfg, device.type)
    where = f"{workers} worker processes" if workers else "this process"
    log(
        f"data: {splits.description}; device: {device} ({where}); "
        f"WRN-{cfg.model.depth}-{cfg.model.width} at sparsity {cfg.search.sparsity}"
    )
    layout = layout_of(cfg)
    if not known:
        write_json(paths.config, cfg.to_dict())
    write_json(paths.environment, environment(splits.description, device, workers))

    seed_everything(cfg.seed)
    state, done = SearchState(), 0
    if paths.checkpoint.exists():
        state, done = load_checkpoint(paths, layout, cfg.search.survivors)
        log(f"resuming at generation {state.generation + 1} of {cfg.search.generations}")
    journal = Journal(paths.evaluations, layout, done)
    progress = Progress(cfg.search, enabled=show_progress)

    def on_generation_start(gen, nevals):
        journal.gen = gen
        progress.start_generation(gen, nevals)

    def on_evaluated(gen, index, ind):
        ind.record, fresh = journal.record(gen, index, ind.record)
        progress.evaluated(ind.record, reused=not fresh)

    def on_generation_end(st):
        save_checkpoint(paths, st, layout, evaluations=journal.rows)
        progress.end_generation(st)

    pool = ProcessMap(cfg, workers) if workers else None
    try:
        evaluate = pool.evaluate if pool else Evaluator(cfg, splits, device)
        del splits  # the workers hold their own copy
        toolbox = make_toolbox(cfg.search, layout, evaluate)
        if pool:
            toolbox.register("map", pool)
        if customize is not None:
            customize(toolbox)
        toolbox.register("map", journal.wrap(toolbox.map))  # the backend's map must keep input order
        evolve(toolbox, cfg.search, state, Hooks(on_generation_start, on_evaluated, on_generation_end))
    finally:
        if pool:
            pool.close()
    return paths.root


def environment(data_description: str, device: torch.device, workers: int) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "data": data_description,
        "device": str(device),
        "gpu": gpu,
        "worker_processes": workers,
        "evo_sparse": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- summary (for `evo-sparse show`) ------------------------------------------------------------------------------


def summarize(folder: str | Path) -> dict[str, Any]:
    """The run's state as plain data: config, progress, best mask, logbook and final population."""
    paths = RunPaths(Path(folder))
    if not paths.config.exists():
        raise RunStateError(f"{folder} is not a run folder (no config.json); give the folder `evo-sparse run` printed")
    cfg = RunConfig.from_dict(read_json(paths.config, "run config"))
    layout = layout_of(cfg)
    journal = read_jsonl(paths.evaluations)
    ckpt = read_json(paths.checkpoint, "checkpoint") if paths.checkpoint.exists() else None
    env = read_json(paths.environment, "environment") if paths.environment.exists() else {}

    def described(entry):
        rec = entry["record"]
        return {
            "fitness": rec.get("fitness"),
            "status": rec.get("status"),
            "sparsity": rec.get("sparsity"),
            "params": rec.get("params"),
            "macs": rec.get("macs"),
            "mask": entry["mask"],
        }

    ok = [r for r in journal if r.get("status") == "ok"]
    hof = ckpt["hall_of_fame"] if ckpt else []
    full_params, full_macs = models.cost(cfg.model.depth, cfg.model.width)
    return {
        "run_dir": str(paths.root),
        "algorithm": cfg.search.algorithm,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "sparsity": cfg.search.sparsity,
        "sampling": cfg.search.sampling,
        "population_size": cfg.search.population,
        "keep": cfg.search.survivors,
        "generations": cfg.search.generations,
        "generations_done": ckpt["next_generation"] if ckpt else 0,
        "finished": bool(ckpt) and ckpt["next_generation"] >= cfg.search.generations,
        "evaluations": len(journal),
        "failed_evaluations": len(journal) - len(ok),
        "data": env.get("data"),
        "device": env.get("device"),
        "model": {
            "depth": cfg.model.depth,
            "width": cfg.model.width,
            "params": full_params,
            "macs": full_macs,
            "maskable_nodes": layout.size,
        },
        "train_images_per_eval": cfg.train.train_images // cfg.train.batch_size * cfg.train.batch_size,
        "eval_seconds_mean": float(np.mean([r["seconds"] for r in ok])) if ok else None,
        "best": described(hof[0]) if hof else None,
        "hall_of_fame": [described(e) for e in hof],
        "logbook": [
            {k: e[k] for k in ("gen", "nevals", "failed", "min", "avg", "max", "std")}
            for e in (ckpt["logbook"] if ckpt else [])
        ],
        "population": [described(e) for e in (ckpt["population"] if ckpt else [])],
    }
