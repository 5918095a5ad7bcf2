"""Every folder and file name the project writes, and the one short hash that names folders.

A folder is a function of its settings (open_lth's habit): ``short_hash`` of the settings that differ from the
defaults, so a new setting with a neutral default never renames old folders. The layout under ``--runs-dir``::

    <algorithm>_<hash>/seed_<seed>/            a search (RunPaths), with final_<recipe hash>/ inside
    dense_<hash>/seed_<seed>/final_<hash>/     the dense parent's final trainings, shared by runs of one network
    study_<hash>/, compare_<hash>/             a paper study, a comparison (StudyPaths)
    fidelity_<hash>/seed_<seed>/               a fidelity study (FidelityPaths)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evo_sparse.foundations.config import FinalConfig, RunConfig

HASH_CHARS = 10

CONFIG = "config.json"  # every folder that a config names holds it
LOCK = "lock"
RECIPE = "final.json"  # a final_<hash> folder's recipe
STUDY, RESULTS, RESULTS_CSV, ANALYSIS, COMPARISON = (
    "study.json",
    "results.json",
    "results.csv",
    "analysis.json",
    "comparison.json",
)
FIDELITY, TRAININGS, REFERENCE = "fidelity.json", "trainings.jsonl", "reference"


def short_hash(obj: Any) -> str:
    """The hash that names folders: the first ``HASH_CHARS`` hex digits of SHA-256 over ``obj`` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def seed_folder(seed: int) -> str:
    return f"seed_{seed}"


@dataclass(frozen=True)
class RunPaths:
    """Every file of a search's folder."""

    root: Path

    config = property(lambda self: self.root / CONFIG)
    environment = property(lambda self: self.root / "environment.json")
    evaluations = property(lambda self: self.root / "evaluations.jsonl")
    checkpoint = property(lambda self: self.root / "checkpoint.json")
    lock = property(lambda self: self.root / LOCK)

    @staticmethod
    def holds_run(folder: Path) -> bool:
        return (Path(folder) / "checkpoint.json").exists()


def run_folder(cfg: RunConfig) -> Path:
    """A search's folder: ``<runs_dir>/<algorithm>_<hash of its non-default settings>/seed_<seed>``."""
    return Path(cfg.runs_dir) / f"{algorithm_slug(cfg.search.algorithm)}_{cfg.run_hash()}" / seed_folder(cfg.seed)


def algorithm_slug(name: str) -> str:
    """An algorithm's name as a folder name: ``weedout``; ``examples.local_search:search`` gives
    ``examples_local_search_search``."""
    return re.sub(r"\W+", "_", name).strip("_") or "algorithm"


def dense_folder(cfg: RunConfig, runs_dir: Path) -> Path:
    """The dense parent's folder: a function of everything but the search settings (and where it runs)."""
    from evo_sparse.foundations.config import SearchConfig

    net = dataclasses.replace(cfg, search=SearchConfig())
    return Path(runs_dir) / f"dense_{net.run_hash()}" / seed_folder(cfg.seed)


def is_dense_folder(folder: Path) -> bool:
    folder = Path(folder)
    return folder.name.startswith("seed_") and folder.parent.name.startswith("dense_")


def final_folder(root: Path, final: FinalConfig) -> Path:
    """Where one final-training recipe's results go, inside a run (or dense) folder."""
    return Path(root) / f"final_{final.final_hash()}"


def final_folders(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).glob("final_*") if p.is_dir())


def result_name(kind: str, index: int, train_seed: int) -> str:
    """One fully trained network's file: ``<kind>_<index>_seed<training seed>.json``."""
    return f"{kind}_{index}_seed{train_seed}.json"


def result_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*_seed*.json"))


@dataclass(frozen=True)
class StudyPaths:
    """Every file of a study or comparison folder."""

    root: Path

    study = property(lambda self: self.root / STUDY)
    results_json = property(lambda self: self.root / RESULTS)
    results_csv = property(lambda self: self.root / RESULTS_CSV)
    analysis = property(lambda self: self.root / ANALYSIS)
    comparison = property(lambda self: self.root / COMPARISON)


def study_folder(runs_dir: str | Path, key: Any) -> StudyPaths:
    return StudyPaths(Path(runs_dir) / f"study_{short_hash(key)}")


def comparison_folder(runs_dir: str | Path, key: Any) -> StudyPaths:
    return StudyPaths(Path(runs_dir) / f"compare_{short_hash(key)}")


@dataclass(frozen=True)
class FidelityPaths:
    """Every file of a fidelity study's folder."""

    root: Path

    config = property(lambda self: self.root / CONFIG)
    lock = property(lambda self: self.root / LOCK)
    trainings = property(lambda self: self.root / TRAININGS)
    report = property(lambda self: self.root / FIDELITY)
    reference = property(lambda self: self.root / REFERENCE)


def fidelity_folder(runs_dir: str | Path, key: Any, seed: int) -> Path:
    return Path(runs_dir) / f"fidelity_{short_hash(key)}" / seed_folder(seed)
