"""What a runs folder holds (``evo-sparse list``): one entry per search, dense parent, study, comparison and fidelity
folder under it (names from ``paths``), each read without writing anything. A folder whose files cannot be read is an
entry with status ``damaged`` and the reason, never an error: one bad folder must not hide the others.

An entry is plain data (``ENTRY_KEYS``): ``kind``, ``folder`` (relative to the runs folder), ``status`` (finished,
unfinished, running, damaged, or ``-`` where a kind has no end), ``reason`` (why damaged), ``preset``, ``settings``
(what differs from the preset, short names), ``progress`` (text), ``generations_done`` and ``generations`` (searches),
``best`` (best fitness: searches and comparisons), ``failed`` (failed evaluations or trainings) and ``modified`` (the
newest file's time, ISO 8601).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.errors import ConfigError, EvoSparseError
from evo_sparse.foundations.paths import (
    CONFIG,
    FidelityPaths,
    RunPaths,
    StudyPaths,
    final_folders,
    result_files,
)
from evo_sparse.foundations.presets import preset_changes
from evo_sparse.foundations.storage import SCHEMA_VERSION, lock_holder, read_json, read_jsonl

ENTRY_KEYS = (
    "kind", "folder", "status", "reason", "preset", "settings", "progress", "generations_done", "generations", "best",
    "failed", "modified",
)  # fmt: skip
_HASHED_FOLDER = re.compile(r"(\w+)_[0-9a-f]{10}")  # <kind or algorithm>_<short_hash>
_WITH_SEEDS = ("dense", "fidelity")  # kinds whose folders hold seed_<n>/ levels, as searches do


def list_folders(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every known folder under ``runs_dir`` as an entry, sorted by folder; ConfigError if ``runs_dir`` is no folder.
    Folders of other names are not ours and are left out."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir} is not a folder; give the --runs-dir the runs were written to")
    entries = []
    for top in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        m = _HASHED_FOLDER.fullmatch(top.name)
        if not m:
            continue
        prefix = m.group(1)
        if prefix in ("study", "compare"):
            entries.append(_entry(prefix, top, runs_dir, _study if prefix == "study" else _comparison))
            continue
        kind = prefix if prefix in _WITH_SEEDS else "run"
        reader = {"dense": _dense, "fidelity": _fidelity, "run": _search}[kind]
        for folder in sorted(p for p in top.glob("seed_*") if p.is_dir()):
            entries.append(_entry(kind, folder, runs_dir, reader))
    return entries


def _entry(kind: str, folder: Path, runs_dir: Path, reader: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    entry = dict.fromkeys(ENTRY_KEYS) | {"kind": kind, "folder": folder.relative_to(runs_dir).as_posix()}
    entry |= {"status": "-", "settings": {}, "progress": "-", "modified": _modified(folder)}
    try:
        entry |= reader(folder)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is damage to report, not a reason to stop listing
        if isinstance(exc, EvoSparseError | ValueError):
            reason = str(exc)
        else:  # a JSON file of the wrong shape: a missing key, a list for an object
            reason = f"unexpected contents ({type(exc).__name__}: {'no ' if isinstance(exc, KeyError) else ''}{exc})"
        entry |= {"status": "damaged", "reason": " ".join(reason.split()).replace(f"{folder}/", "")}
    return entry


def _object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; RunStateError (from ``read_json``) or ValueError otherwise."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path.name} is damaged (not a JSON object)")
    return data


def _modified(folder: Path) -> str | None:
    try:
        newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*"))])
    except OSError:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(newest))


def _settings(cfg: RunConfig, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """What differs from the preset, by the setting's own name (``sparsity``, ``lr``); the seed is a folder level."""
    return {k.split(".")[-1]: v for k, v in preset_changes(cfg).items() if k not in ("seed", *drop)}


def _run_config(data: Any, what: str) -> RunConfig:
    if not isinstance(data, dict):
        raise ValueError(f"{what} holds no run settings")
    return RunConfig.from_dict({k: v for k, v in data.items() if k != "schema"})


def _search(folder: Path) -> dict[str, Any]:
    from evo_sparse.runs.run import read_config, summarize

    paths = RunPaths(folder)
    if not any(p.exists() for p in (paths.config, paths.checkpoint, paths.evaluations)):  # locked, then stopped
        return {"status": "running" if lock_holder(paths.lock) else "unfinished", "progress": "not started"}
    if not paths.config.exists():
        raise ValueError(f"no {CONFIG}: not a run folder, or one whose start was cut short")
    cfg = read_config(paths.config)
    s = summarize(folder)
    finals = sum(len(result_files(f)) for f in final_folders(folder))
    status = "finished" if s["finished"] else "unfinished"
    progress = f"{s['generations_done']}/{s['generations']} generations" + (f", {finals} final" if finals else "")
    return {
        "status": "running" if lock_holder(paths.lock) else status,
        "preset": cfg.preset,
        "settings": _settings(cfg),
        "progress": progress,
        "generations_done": s["generations_done"],
        "generations": s["generations"],
        "best": s["best"]["fitness"] if s["best"] else None,
        "failed": s["failed_evaluations"],
    }


def _dense(folder: Path) -> dict[str, Any]:
    cfg = _run_config(_object(folder / CONFIG, "dense config"), "dense config")
    records = [_object(p, "final training") for f in final_folders(folder) for p in result_files(f)]
    return {
        "preset": cfg.preset,
        "settings": _settings(cfg),
        "progress": f"{len(records)} final trainings",
        "failed": sum(r.get("status") != "ok" for r in records),
    }


def _study(folder: Path) -> dict[str, Any]:
    paths = StudyPaths(folder)
    if not paths.study.exists():
        return {"status": "unfinished", "progress": "no study.json yet"}
    study = _object(paths.study, "study")
    cfg = _run_config(study.get("run_config"), "study.json")
    rows = read_json(paths.results_json, "results") if paths.results_json.exists() else []
    sparsities = ",".join(f"{s:g}" for s in study["sparsities"])
    return {
        "status": "finished",
        "preset": cfg.preset,
        "settings": {"sparsities": sparsities, "seeds": study["seeds"]} | _settings(cfg, ("search.sparsity",)),
        "progress": f"{len(study['runs'])} runs, {len(rows)} final trainings",
        "failed": sum(r.get("status") != "ok" for r in rows),
    }


def _comparison(folder: Path) -> dict[str, Any]:
    paths = StudyPaths(folder)
    if not paths.comparison.exists():
        return {"status": "unfinished", "progress": "no comparison.json yet"}
    c = _object(paths.comparison, "comparison")
    cfg = _run_config(c.get("run_config"), "comparison.json")
    best = [e["best"] for e in c["runs"] if e.get("best") is not None]
    return {
        "status": "finished",
        "preset": cfg.preset,
        "settings": {"algorithms": ",".join(c["algorithms"])} | _settings(cfg, ("search.algorithm",)),
        "progress": f"{len(c['runs'])} runs of {c.get('budget_trainings', c.get('budget_evaluations'))} trainings",
        "best": max(best) if best else None,
    }


def _fidelity(folder: Path) -> dict[str, Any]:
    paths = FidelityPaths(folder)
    saved = _object(paths.config, "fidelity config")
    if saved.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"fidelity config has schema {saved.get('schema')!r}, this evo-sparse reads {SCHEMA_VERSION}")
    cfg = _run_config(saved, "fidelity config")
    rows = read_jsonl(paths.trainings, repair=False)
    finished = paths.report.exists()
    return {
        "status": "running" if lock_holder(paths.lock) else ("finished" if finished else "unfinished"),
        "preset": cfg.preset,
        "settings": _settings(cfg, ("train.train_images", "train.lr", "search.sampling", "train.replicates")),
        "progress": f"{len(rows)} mask trainings",
        "failed": sum(r.get("status") != "ok" for r in rows),
    }


# --- text ---------------------------------------------------------------------------------------------------------


def age(modified: str | None, now: float | None = None) -> str:
    """``modified`` (ISO 8601) as a person reads it: ``just now``, ``12 min ago``, ``5 h ago``, ``3 days ago``, then
    the date."""
    if modified is None:
        return "-"
    then = datetime.strptime(modified, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    seconds = (time.time() if now is None else now) - then
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 7 * 86400:
        return f"{int(seconds // 86400)} days ago"
    return modified[:10]


def _value(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def format_listing(entries: list[dict[str, Any]]) -> str:
    """One line per entry under a header: kind, folder, status, progress, best, failed, last change, then the settings
    that differ from the preset (or, for a damaged folder, why)."""
    rows = [("KIND", "FOLDER", "STATUS", "PROGRESS", "BEST", "FAILED", "CHANGED", "SETTINGS (vs preset)")]
    for e in entries:
        what = ", ".join(f"{k}={_value(v)}" for k, v in e["settings"].items())
        what = f"{e['preset']}: {what}" if e["preset"] and what else (e["preset"] or what or "-")
        rows.append((
            e["kind"],
            e["folder"],
            e["status"],
            e["progress"],
            "-" if e["best"] is None else f"{e['best']:.4f}",
            "-" if e["failed"] is None else str(e["failed"]),
            age(e["modified"]),
            e["reason"] if e["status"] == "damaged" else what,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)
