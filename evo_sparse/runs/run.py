"""Run folders: where a run's files live, how a search is started, checkpointed and resumed, and its summary.

A run folder is a function of the config: ``<runs_dir>/<algorithm>_<hash of non-default settings>/seed_<seed>/``.
It holds (names spelled once, in ``RunPaths``):

- ``config.json``: the full config; a rerun with other settings never lands in the same folder.
- ``environment.json``: which data, device and versions computed the results.
- ``evaluations.jsonl``: one line per evaluation, written as each finishes (mask, fitness, status, seconds, ...).
- ``checkpoint.json``: after every generation, the next generation's index, population, hall of fame, logbook and
  every RNG state (see ``checkpoint``). Running the same command again resumes from it; evaluations of an unfinished
  generation that the journal already holds are reused, not recomputed; a finished run is left as it is.
- ``lock``: an empty file that the process writing the folder holds a lock on (``storage.folder_lock``), so a second
  process is refused; the kernel drops the lock when its holder dies, so a killed run never blocks its resumption.

Every state file carries the schema version (``storage.SCHEMA_VERSION``; each journal row too) and is refused, with
a message saying what differs, when it is of another version or another run.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evo_sparse import __version__
from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.errors import ConfigError, EvoSparseError, RunStateError
from evo_sparse.foundations.paths import RunPaths, run_folder
from evo_sparse.foundations.progress import Progress
from evo_sparse.foundations.seeds import seed_everything
from evo_sparse.foundations.storage import (
    SCHEMA_VERSION,
    folder_lock,
    read_json,
    read_jsonl,
    remove_temp_files,
    write_json,
)
from evo_sparse.models.masks import Layout
from evo_sparse.models.registry import architecture
from evo_sparse.runs import checkpoint, tensorboard
from evo_sparse.runs.journal import Journal, shared_scores, trainings
from evo_sparse.search import asktell, plugins
from evo_sparse.search.algorithms import Hooks, SearchState, evolve, make_toolbox
from evo_sparse.stats.measurement import run_noise
from evo_sparse.training.data import load_splits


def layout_of(cfg: RunConfig) -> Layout:
    return architecture(cfg.model).layout


# --- the config file and the journal -----------------------------------------------------------------------------


def write_config(paths: RunPaths, cfg: RunConfig) -> None:
    write_json(paths.config, {"schema": SCHEMA_VERSION, **cfg.to_dict()})


def read_config(path: Path) -> RunConfig:
    """A run folder's config.json; RunStateError if it is damaged or of another schema version."""
    saved = read_json(path, "run config")
    if not isinstance(saved, dict):
        raise RunStateError(f"run config {path} is damaged (not a JSON object); restore it or delete the run folder")
    checkpoint.check_schema(saved.get("schema"), path, "run config")
    try:
        return RunConfig.from_dict({k: v for k, v in saved.items() if k != "schema"}).validate()
    except (EvoSparseError, TypeError, ValueError) as exc:
        raise RunStateError(f"run config {path} is damaged ({exc}); restore it or delete the run folder") from None


def check_config(paths: RunPaths, cfg: RunConfig) -> bool:
    """True if the folder already holds this config; RunStateError saying what differs if it holds another one."""
    if not paths.config.exists():
        return False
    saved = read_config(paths.config)
    if saved.hashed_items() != cfg.hashed_items():
        what = checkpoint.differences(saved.hashed_items(), cfg.hashed_items())
        raise RunStateError(f"{paths.config} was written by other settings ({what}); use another --runs-dir")
    return True


def search_finished(cfg: RunConfig) -> bool:
    """Whether the search ``cfg`` names is finished: every generation done or its budget spent (its folder's config
    and checkpoint checked)."""
    cfg = plugins.identify(cfg)[0]
    paths = RunPaths(run_folder(cfg))
    return check_config(paths, cfg) and is_finished(paths, cfg, layout_of(cfg))


def is_finished(paths: RunPaths, cfg: RunConfig, layout: Layout) -> bool:
    """True when the folder's checkpoint (checked against ``cfg``) is of a finished run (``checkpoint.finished``)."""
    if not paths.checkpoint.exists():
        return False
    return checkpoint.finished(checkpoint.read(paths.checkpoint, cfg, layout), cfg)


def execute(
    cfg: RunConfig,
    *,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
    customize: Callable[[Any], None] | None = None,
) -> Path:
    """Run (or resume, or skip when finished) the search ``cfg`` describes; return its folder.

    ``cfg.search.algorithm`` is a built-in or a plug-in (``search.plugins``); the folder's hash includes a plug-in's
    options and source. ``customize(toolbox)`` may register other DEAP operators (``mate``, ``mutate``, ``select``,
    ``select_parents``) before the loop starts; the run folder does not know about them: give such runs their own
    ``runs_dir``, or make them a plug-in. Raises EvoSparseError subclasses (one line for the user) for bad settings, a
    plug-in that cannot be had or breaks its contract, bad data, a run folder in use, damaged or foreign state files, a
    folder that cannot be written, and too many failed evaluations; every file on disk is left as it was, except that
    a torn last journal line and stray temp files from a crash are removed.
    """
    from evo_sparse.execution import backends
    from evo_sparse.foundations.devices import resolve_device

    backends.refuse_while_bootstrapping()
    cfg, algorithm, options = plugins.identify(cfg.validate())
    paths = RunPaths(run_folder(cfg))
    layout = layout_of(cfg)
    board = tensorboard.RunBoard.open(cfg, paths)  # None without --tensorboard; ConfigError without TensorBoard
    if check_config(paths, cfg) and is_finished(paths, cfg, layout):  # read-only: a finished run is not locked
        log(f"run already finished: {paths.root}")
        return _closed(board, paths, cfg, layout)
    device = None if cfg.backend == "ray" else resolve_device(cfg.device)  # on Ray, the cluster's devices count
    if cfg.train.compile and device is not None and device.type != "cuda":
        raise ConfigError(
            f"--compile is for CUDA devices, not {device} (on a CPU it was measured to gain nothing); drop it"
        )
    where = backends.plan(cfg, device)
    splits = load_splits(cfg, log)  # also decodes and caches the data once, before any worker starts
    asks = algorithm.kind == plugins.ASK_TELL
    with folder_lock(paths.lock):
        remove_temp_files(paths.root)
        known = check_config(paths, cfg)  # again: another process may have started or finished it meanwhile
        ckpt = checkpoint.read(paths.checkpoint, cfg, layout) if paths.checkpoint.exists() else None
        if ckpt and checkpoint.finished(ckpt, cfg):
            log(f"run already finished: {paths.root}")
            return _closed(board, paths, cfg, layout)
        journal = Journal(
            paths.evaluations,
            layout,
            ckpt["evaluations"] if ckpt and not asks else 0,  # an ask/tell plug-in is replayed from its first ask
            train_images=cfg.train.train_images,
            batch_size=cfg.train.batch_size,
            budget=cfg.search.trainings if asks or cfg.search.budget else None,  # generational: the generations
            strict=cfg.search.algorithm if asks else None,
        )
        journal.check_failures(cfg.search.max_failed_share)  # a run stopped for failures stays stopped until allowed
        journal.share(shared_scores(cfg, paths.root))
        if not known:
            write_config(paths, cfg)
        write_json(paths.environment, environment(splits.description, device, where))
        log(
            f"data: {splits.description}; device: {device or 'the Ray cluster'} ({where.describe()}); "
            f"{architecture(cfg.model).label} at sparsity {cfg.search.sparsity}; algorithm {cfg.search.algorithm}"
        )
        state = checkpoint.restore(ckpt, layout, cfg.search.survivors) if ckpt and not asks else SearchState()
        done_before = ckpt["next_generation"] if ckpt else 0  # generations an ask/tell replay does not save again
        if board:
            board.catch_up(ckpt["logbook"] if ckpt else [])  # what an earlier start journaled but did not write
            journal.on_row = board.evaluation
        if ckpt:
            log(f"resuming at generation {done_before + 1}" + ("" if asks else f" of {cfg.search.generations}"))
        progress = Progress(cfg.search, enabled=show_progress, budget_left=journal.budget_left, asks=asks)

        def on_generation_start(gen, nevals):
            journal.gen = gen
            progress.start_generation(gen, nevals)

        def on_evaluated(gen, index, ind):
            ind.record, reused = journal.kept(ind.record)
            progress.evaluated(ind.record, reused=reused)

        def on_generation_end(st):
            if st.generation <= done_before and not st.finished:
                return  # an ask/tell plug-in replaying what the checkpoint already holds
            evaluations = sum(e["nevals"] for e in st.logbook)
            checkpoint.save(paths.checkpoint, cfg, st, layout, evaluations=evaluations, kind=algorithm.kind)
            progress.end_generation(st)
            if board:
                board.generation(st.logbook[-1])
            limit = cfg.search.max_failed_share
            if not (st.finished or (not asks and st.generation >= cfg.search.generations)):
                journal.check_failures(limit)  # after the checkpoint: the same command resumes from here
            elif journal.rows and len(journal.failed) / journal.rows > limit:
                log(f"warning: {journal.failure_summary(limit).split(' (last')[0]}; the run finished anyway")

        hooks = Hooks(on_generation_start, on_evaluated, on_generation_end, journal.budget_left)
        pool = backends.start(where, cfg, splits, log)
        try:
            del splits  # the evaluator (here or in each worker) holds its own copy
            t = cfg.train
            toolbox = make_toolbox(
                cfg.search, layout, pool.evaluate, train_images=t.train_images, batch_size=t.batch_size
            )
            toolbox.register("map", pool)
            if customize is not None:
                customize(toolbox)
            inner = toolbox.map  # the backend's map must keep input order
            unordered = pool.unordered if getattr(inner, "func", None) is pool else None
            toolbox.register("map", journal.wrap(inner, unordered))
            # Seed (or restore) every generator last, so that nothing built above can shift what the search draws;
            # an ask/tell plug-in is built after the seeding, so that it draws the same on every start.
            if asks:
                seed_everything(cfg.seed)
                searcher = plugins.install(toolbox, algorithm, options)
                asktell.run(toolbox, cfg.search, searcher, cfg.search.algorithm, hooks)
            else:
                plugins.install(toolbox, algorithm, options)
                seed_everything(cfg.seed)
                if ckpt:
                    checkpoint.set_rng_state(ckpt["rng"])
                evolve(toolbox, cfg.search, state, hooks)
        finally:
            pool.close()
            if board:
                board.close()
    return paths.root


def _closed(board: tensorboard.RunBoard | None, paths: RunPaths, cfg: RunConfig, layout: Layout) -> Path:
    """A finished run's folder, after its board (if any) caught up with it."""
    if board:
        board.catch_up(checkpoint.read(paths.checkpoint, cfg, layout)["logbook"])
        board.close()
    return paths.root


def environment(data_description: str, device: torch.device | None, where) -> dict[str, Any]:
    """What computes the run: data, device (None: a Ray cluster's), backend (a ``backends.Plan``), versions."""
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None
    return {
        "schema": SCHEMA_VERSION,
        "data": data_description,
        "device": str(device) if device is not None else "ray",
        "gpu": gpu,
        "backend": where.backend,
        "worker_processes": where.workers,
        "evaluations_run_in": where.describe(),
        "evo_sparse": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- summary (for `evo-sparse show`) ------------------------------------------------------------------------------


def summarize(folder: str | Path) -> dict[str, Any]:
    """The run's state as plain data: config, progress, best mask, logbook and final population. Reads, never writes."""
    paths = RunPaths(Path(folder))
    if not paths.config.exists():
        raise RunStateError(f"{folder} is not a run folder (no config.json); give the folder `evo-sparse run` printed")
    cfg = read_config(paths.config)
    layout = layout_of(cfg)
    journal = read_jsonl(paths.evaluations, repair=False)  # read-only: a torn last line is left for the run to cut
    ckpt = checkpoint.read(paths.checkpoint, cfg, layout) if paths.checkpoint.exists() else None
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
    trained = [r for r in ok if r.get("cache") is None]
    hof = ckpt["hall_of_fame"] if ckpt else []
    arch = architecture(cfg.model)
    full_params, full_macs = arch.cost()
    return {
        "run_dir": str(paths.root),
        "algorithm": cfg.search.algorithm,
        "algorithm_options": cfg.search.algo_opts,
        "algorithm_source": cfg.search.algorithm_source,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "sparsity": cfg.search.sparsity,
        "sampling": cfg.search.sampling,
        "population_size": cfg.search.population,
        "keep": cfg.search.survivors,
        "generations": cfg.search.generations,
        "generations_done": ckpt["next_generation"] if ckpt else 0,
        "finished": bool(ckpt) and checkpoint.finished(ckpt, cfg),
        "kind": ckpt.get("kind", "builtin") if ckpt else None,
        "evaluations": len(journal),
        "trainings": trainings(journal),
        "cache_hits": sum(r.get("cache") is not None for r in journal),
        "budget": cfg.search.budget or None,
        "failed_evaluations": len(journal) - len(ok),
        "data": env.get("data"),
        "device": env.get("device"),
        "model": {
            "name": cfg.model.name,
            "label": arch.label,
            "batched": arch.batches,
            "depth": cfg.model.depth,
            "width": cfg.model.width,
            "params": full_params,
            "macs": full_macs,
            "maskable_nodes": layout.size,
        },
        "train_images_per_eval": cfg.train.replicates
        * (cfg.train.train_images // cfg.train.batch_size * cfg.train.batch_size),
        "eval_seconds_mean": float(np.mean([r["seconds"] for r in trained])) if trained else None,
        "replicates": cfg.train.replicates,
        "noise": run_noise(journal),
        "best": described(hof[0]) if hof else None,
        "hall_of_fame": [described(e) for e in hof],
        "logbook": [
            {k: e[k] for k in ("gen", "nevals", "failed", "min", "avg", "max", "std")}
            for e in (ckpt["logbook"] if ckpt else [])
        ],
        "population": [described(e) for e in (ckpt["population"] if ckpt else [])],
    }
