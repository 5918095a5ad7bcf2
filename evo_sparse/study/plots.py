"""The paper's figures: pure functions from run, study and comparison folders to PNG + PDF files. They never train.

Every figure is written as ``<name>.png``, ``<name>.pdf`` and ``<name>.json``; the JSON sidecar names the folders it
was drawn from and holds the plotted numbers. Figures are drawn on matplotlib ``Figure`` objects (no pyplot state, no
display needed); PDFs carry no creation date, so the same data gives the same files. Every title or caption gives n
and the training length; kinds and algorithms have colour-blind-safe colours and their own markers (``plot_style``).
This module reads folders (``load``) and draws what they allow (``draw_all``); the figures live in ``plots_masks`` and
``plots_search`` and are importable from here.

- ``accuracy_vs_sparsity``: final test accuracy vs sparsity, dense / random / found: masks as dodged points, the mean
  with its 95% t-interval; node sparsity with parameter sparsity on the axis.
- ``early_vs_final``: early fitness vs final test accuracy per mask, one panel per sparsity, Kendall τ with its 95% CI
  within each kind and pooled; the early fitness is the one ``analysis.early_measure`` picks (held-out replicate,
  else as the search measured it), named in the axis label and in the sidecar's ``early_measure``.
- ``fitness_over_generations``: best and mean fitness per generation, per algorithm and sparsity (mean over seeds),
  with a band of the noise of one fitness value.
- ``validation_curves``: validation accuracy per epoch of full training, mean over masks with its 95% t-interval.
- ``cost_vs_accuracy``: parameters and FLOPs (multiply-accumulates) vs final test accuracy.
- ``best_so_far``: GA vs Random Search, best fitness so far vs trainings, mean with its 95% t-interval, and the
  expected curve of pure Random Search from generation 0's fitness values (``compare``).
- ``fidelity_reliability``: reliability of a fitness (ICC) vs its training budget, per recipe (``fidelity``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evo_sparse.foundations.errors import EvoSparseError
from evo_sparse.foundations.paths import (
    COMPARISON,
    FIDELITY,
    RECIPE,
    RESULTS,
    STUDY,
    RunPaths,
    final_folders,
    is_dense_folder,
)
from evo_sparse.foundations.storage import read_json
from evo_sparse.study.plot_style import brief_trainings
from evo_sparse.study.plots_masks import (
    EARLY_LABELS,
    accuracy_vs_sparsity,
    cost_vs_accuracy,
    early_masks,
    early_vs_final,
    validation_curves,
)
from evo_sparse.study.plots_search import best_so_far, fidelity, fitness_over_generations

__all__ = [
    "EARLY_LABELS",
    "FIGURES",
    "Material",
    "accuracy_vs_sparsity",
    "best_so_far",
    "cost_vs_accuracy",
    "draw_all",
    "early_masks",
    "early_vs_final",
    "fidelity",
    "fitness_over_generations",
    "load",
    "validation_curves",
]

FIGURES = (
    "accuracy_vs_sparsity",
    "early_vs_final",
    "fitness_over_generations",
    "validation_curves",
    "cost_vs_accuracy",
    "best_so_far",
)


@dataclass
class Material:
    """What a set of folders holds: final-training rows, search runs (their summaries) and GA-vs-RS comparisons."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    fidelity: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (folder, ``fidelity`` report)


def load(folders: list[str | Path]) -> Material:
    """Read study, comparison, run and ``final_<hash>`` folders; EvoSparseError for a folder that is none of them."""
    from evo_sparse.runs import run
    from evo_sparse.study import final

    m = Material()
    for folder in map(Path, folders):
        if (folder / RESULTS).exists():  # a study: paths inside are relative to its folder
            rows = read_json(folder / RESULTS, "study results")
            m.rows += [r | {"source": os.path.normpath(folder / r["source"])} for r in rows]
            study = read_json(folder / STUDY, "study description")
            m.runs += [run.summarize(os.path.normpath(folder / r)) for r in study["runs"]]
        elif (folder / COMPARISON).exists():
            comparison = read_json(folder / COMPARISON, "comparison")
            for r in comparison["runs"]:
                r["run_dir"] = os.path.normpath(folder / r["run_dir"])
            m.comparisons.append(comparison)
            m.runs += [run.summarize(r["run_dir"]) for r in comparison["runs"]]
        elif (folder / FIDELITY).exists():
            m.fidelity.append((str(folder), read_json(folder / FIDELITY, "fidelity report")))
        elif (folder / RECIPE).exists():
            m.rows += final.read_results(folder)
        elif RunPaths.holds_run(folder):
            m.runs.append(run.summarize(folder))
            m.rows += final.run_results(folder)
        elif is_dense_folder(folder):
            m.rows += [r for f in final_folders(folder) for r in final.read_results(f)]
        else:
            raise EvoSparseError(
                f"{folder} is not a study, comparison, fidelity, run or final-training folder; give a folder that "
                "`evo-sparse paper`, `compare`, `fidelity`, `run` or `final` printed"
            )
    return m


def draw_all(material: Material, out: str | Path) -> list[Path]:
    """Every figure the material allows, into ``out``; the written PNG paths (EvoSparseError if none can be drawn)."""
    out = Path(out)
    ok = [r for r in material.rows if r.get("status") == "ok" and r.get("final_test_acc") is not None]
    written = []
    if ok:
        written += [accuracy_vs_sparsity(ok, out), validation_curves(ok, out), cost_vs_accuracy(ok, out)]
        if early_masks(ok)[1]:
            brief, replicates = brief_trainings(material.runs)
            written.append(early_vs_final(ok, out, brief_images=brief or None, replicates=replicates or None))
    if any(r["logbook"] for r in material.runs):
        written.append(fitness_over_generations(material.runs, out))
    for c in material.comparisons:
        written.append(best_so_far(c, out))
    for folder, report in material.fidelity:
        written.append(fidelity(report, out, source=folder))
    if not written:
        raise EvoSparseError("nothing to plot: no finished final training, search generation or comparison found")
    return written
