"""Plain-data state on disk: atomic JSON files and an append-only JSON-lines journal. No pickle anywhere.

Atomic write: temp file in the same folder, flush, fsync, ``os.replace``, fsync the folder, so a crash leaves either
the old file or the new one. Journal: one JSON object a line, fsync'd per line; a torn last line (a crash mid-write)
is dropped on reading, damage before it is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evo_sparse.errors import RunStateError

SCHEMA_VERSION = 1


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN/inf are refused (they are not JSON)."""
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file; RunStateError naming the file and ``what`` it is if it is unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunStateError(f"{what} {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise RunStateError(f"{what} {path} is damaged ({exc}); restore it or delete the run folder") from None


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a journal, one line each, and fsync before returning."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a journal. A last line without its newline (a write cut short by a crash) is dropped and cut off
    the file; any other unreadable line is damage, refused with RunStateError."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    if not _:  # no newline at all: everything is a torn first line
        complete, torn = b"", data
    rows = []
    for n, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise RunStateError(f"journal {path} is damaged at line {n}; restore it or delete the run folder") from None
    if torn:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(torn))
    return rows
