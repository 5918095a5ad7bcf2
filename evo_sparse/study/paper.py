"""The paper experiment in one call (``paper``); GA vs Random Search at an equal budget is ``compare``.

``paper``: for every sparsity and seed, the search (``runs.execute``), then the final training of its best K masks and
K random ones (``final``), the dense parent once per seed (sparsity 0 stands for it: a dense network has one mask),
the statistics (``analysis``) and the figures (``plots``). Every step is skipped when done, so a rerun does nothing
and a killed study resumes. Its folder, ``<runs_dir>/study_<hash>/``, holds (names spelled once, in ``StudyPaths``):

- ``study.json``: the settings, and the run and dense folders the results come from (relative to the study folder).
- ``results.json``: one row per network and training seed (``ROW_KEYS`` plus the per-epoch curves);
  ``results.csv``: the same rows without the curves.
- ``analysis.json``: the statistics; the figures as ``<name>.png/.pdf/.json`` (see ``plots``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import FinalConfig, RunConfig
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.paths import study_folder
from evo_sparse.foundations.progress import StudyProgress
from evo_sparse.foundations.storage import SCHEMA_VERSION, write_json_if_changed, write_text_if_changed
from evo_sparse.models.registry import architecture
from evo_sparse.stats import analysis
from evo_sparse.study import final, plots

ROW_KEYS = (
    "sparsity",
    "seed",
    "kind",
    "index",
    "train_seed",
    "algorithm",
    "early_fitness",
    "early_fitness_heldout",
    "final_test_acc",
    "final_val_acc",
    "best_val_acc",
    "params",
    "flops",
    "node_sparsity",
    "epochs",
    "train_images",
    "status",
    "reason",
    "seconds",
    "recipe",
    "mask",
    "source",
)
CURVE_KEYS = ("val_acc", "val_loss", "train_loss")


def parse_list(text: str, option: str, kind=float) -> list:
    """``"0,0.5,0.9"`` as a list; ConfigError naming ``option`` for anything else."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--{option} must be distinct comma-separated values like 0,0.5,0.9, not {text!r}")
    return values


def search_work(cfg: RunConfig) -> float:
    """Work of a search of ``cfg`` (``StudyProgress``): its training images (an upper bound for the GA) times cost."""
    return cfg.search.trainings * cfg.train.train_images * _cost(cfg)


def _cost(cfg: RunConfig, sparsity: float | None = None) -> float:
    """``final.training_cost`` of ``cfg``'s network at its (or the given) sparsity, by layerwise counts."""
    from evo_sparse.runs.run import layout_of

    layout = layout_of(cfg)
    s = cfg.search.sparsity if sparsity is None else sparsity
    return final.training_cost(cfg, dict(zip(layout.names, layout.layerwise_counts(s), strict=True)))


def search_done(cfg: RunConfig) -> bool:
    from evo_sparse.runs.run import search_finished

    return search_finished(cfg)


def planned_job_work(cfg: RunConfig, fc: FinalConfig, kind: str) -> float:
    """The planned work of one final training of ``kind``, before its mask is known (``Job.work`` once it is)."""
    return final.job_images(cfg, fc, early_known=kind == "found") * _cost(cfg, 0.0 if kind == "dense" else None)


# --- the paper experiment ---------------------------------------------------------------------------------------------


def plan(
    base: RunConfig, fc: FinalConfig, *, sparsities: list[float], seeds: int
) -> tuple[dict[tuple[float, int], RunConfig], list[RunConfig]]:
    """The study's searches ({(sparsity, seed): config}, sparsities above 0) and the configs of its dense parents (one
    per seed when 0 is among ``sparsities``), all checked; ConfigError for bad settings."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, not {seeds}")
    fc.validate()
    architecture(base.model)  # the model checks its own depth and width
    for s in sparsities:  # 0 too: it must be a sparsity, though it trains only the dense parent
        base.updated({"search.sparsity": s}).validate()
    configs = {
        (s, seed): base.updated({"search.sparsity": s, "seed": seed}).validate()
        for s in sparsities
        if s > 0
        for seed in range(seeds)
    }
    dense_cfgs = [base.updated({"seed": seed}).validate() for seed in range(seeds)] if 0 in sparsities else []
    for cfg in [*configs.values(), *dense_cfgs]:
        final.check_batch_size(cfg, fc)
    return configs, dense_cfgs


def paper(
    base: RunConfig,
    fc: FinalConfig,
    *,
    sparsities: list[float],
    seeds: int,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Run (or resume, or skip) the whole study; (its folder, the statistics). ConfigError for bad settings, before
    any work."""
    from evo_sparse.runs.run import execute, run_folder

    configs, dense_cfgs = plan(base, fc, sparsities=sparsities, seeds=seeds)
    key = {
        "run": {k: v for k, v in base.hashed_items().items() if k not in ("search.sparsity", "seed")},
        "sparsities": sorted(sparsities),
        "seeds": seeds,
        "final": fc.hashed_items() | {"masks": fc.masks, "seeds": fc.seeds},
    }
    paths = study_folder(base.runs_dir, key)
    runs_dir = Path(base.runs_dir)
    progress = StudyProgress(log, enabled=show_progress)
    planned: dict[tuple[float, int], tuple[int, float]] = {}  # a search's final trainings, until its masks are known
    for search, cfg in configs.items():
        k = fc.masks or cfg.search.survivors
        planned[search] = (
            2 * k * fc.seeds,
            k * fc.seeds * (planned_job_work(cfg, fc, "found") + planned_job_work(cfg, fc, "random")),
        )
        progress.add(1 + planned[search][0], search_work(cfg) + planned[search][1])
    for cfg in dense_cfgs:
        progress.add(fc.seeds, fc.seeds * planned_job_work(cfg, fc, "dense"))

    jobs: list[final.Job] = []
    for (s, seed), cfg in sorted(configs.items()):
        was_done = search_done(cfg)
        run_dir = execute(cfg, log=log, show_progress=show_progress)
        progress.finished(f"search s={s:g} seed {seed}", search_work(cfg), computed=not was_done)
        run_jobs = final.run_jobs(run_dir, fc, dense=False)
        progress.revise(*planned[(s, seed)], run_jobs)
        jobs += run_jobs
    for cfg in dense_cfgs:
        jobs += final.dense_jobs(cfg, runs_dir, fc)
    progress.skip_done(jobs)

    def on_done(job: final.Job, record: dict[str, Any]) -> None:
        progress.trained(f"final {job.kind} #{job.index} s={job.sparsity:g} {job.seed_label}", job, record)

    records = final.execute(jobs, where=base, on_done=on_done, log=log, tensorboard=base.tensorboard)
    rows = [table_row(r, paths.root) for r in records]
    result = analysis.analyse(rows, seed=0)
    study = {
        "schema": SCHEMA_VERSION,
        "sparsities": sorted(sparsities),
        "seeds": seeds,
        "runs": [os.path.relpath(run_folder(c), paths.root) for _, c in sorted(configs.items())],
        "dense": [os.path.relpath(final.dense_folder(c, runs_dir), paths.root) for c in dense_cfgs],
        "run_config": base.to_dict(),
        "final": fc.to_dict(),
    }
    changed = [
        write_json_if_changed(p, obj)
        for p, obj in ((paths.study, study), (paths.results_json, rows), (paths.analysis, result))
    ]
    changed.append(write_text_if_changed(paths.results_csv, to_csv(rows)))
    figures_missing = not all((paths.root / f"{name}.png").exists() for name in expected_figures(rows, configs))
    if any(changed) or figures_missing:
        plots.draw_all(plots.load([paths.root]), paths.root)
    else:
        log(f"study already finished: {paths.root}")
    return paths.root, result


def expected_figures(rows, configs) -> list[str]:
    names = ["accuracy_vs_sparsity", "validation_curves", "cost_vs_accuracy"] if rows else []
    if plots.early_masks([r for r in rows if r.get("status") == "ok" and r.get("final_test_acc") is not None])[1]:
        names.append("early_vs_final")
    return names + (["fitness_over_generations"] if configs else [])


def table_row(record: dict[str, Any], root: Path) -> dict[str, Any]:
    """A results row: ``ROW_KEYS`` and the curves of a final record; its source relative to the study folder."""
    row = {k: record.get(k) for k in ROW_KEYS + CURVE_KEYS}
    row["source"] = os.path.relpath(record["source"], root)
    return row


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_KEYS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --- GA vs Random Search ----------------------------------------------------------------------------------------------
