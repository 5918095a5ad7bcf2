"""Plain-data state on disk: atomic JSON files, an append-only JSON-lines journal and a run folder's lock. No pickle.

Atomic write: temp file in the same folder, write, fsync, ``os.replace``, fsync the folder, so a crash leaves either
the old file or the new one (and at worst a stray ``.<name>.*.tmp`` file, removed by ``remove_temp_files``).
Journal: one JSON object a line, each line written and fsync'd on its own; a torn last line (a crash mid-write) is
dropped on reading, damage before it is refused. Lock: ``flock`` on a file in the folder, which the kernel releases
when its holder exits in any way, SIGKILL included, so a killed run never leaves a stale lock behind.
A write that fails (disk full, folder not writable) raises RunStateError naming the file and leaves what was on disk
as it was. ``faults`` hooks let tests kill the process in the middle of a write.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from evo_sparse.foundations import faults
from evo_sparse.foundations.errors import RunStateError

SCHEMA_VERSION = 2  # of every state file: config.json, environment.json, checkpoint.json and each journal row


def _cannot_write(path: Path, exc: OSError) -> RunStateError:
    reason = exc.strerror or str(exc)
    return RunStateError(
        f"cannot write {path} ({reason}); free some space or choose a writable --runs-dir, "
        "then run the same command to resume"
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the process's umask (read once, at import)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


NEW_FILE_MODE = _new_file_mode()


def temp_file(folder: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder`` with the mode a plain new file gets (mkstemp's is 0o600), so that a file
    it becomes is as readable as any other the user writes (a shared results folder, a group's cluster)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    if hasattr(os, "fchmod"):  # POSIX
        os.fchmod(fd, NEW_FILE_MODE)
    return fd, name


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically; RunStateError if it cannot be written (the old file stays)."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path.parent, prefix=f".{path.name}.")
        try:
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.before_replace(path.name)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    finally:
        if tmp is not None:  # any failure, Ctrl-C included, before the replace: drop the temp file
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN/inf are refused with ValueError (they are not JSON)."""
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file; RunStateError naming the file and ``what`` it is if it is unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunStateError(f"{what} {path} is missing") from None
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise RunStateError(f"{what} {path} is damaged ({reason}); restore it or delete the run folder") from None


def remove_temp_files(folder: Path) -> list[str]:
    """Delete the temp files that writes cut short by a crash left in ``folder``; return their names."""
    gone = []
    for p in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            gone.append(p.name)
    return gone


# --- the journal ------------------------------------------------------------------------------------------------------


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a journal, one line each, each written and fsync'd before the next.

    A line that cannot be written (disk full) is cut off again, so the file ends with the last complete line, and
    RunStateError says so. NaN/inf are refused with ValueError before anything is written.
    """
    path = Path(path)
    lines = [(json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8") for row in rows]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        for line in lines:
            size = os.fstat(fd).st_size
            try:
                if faults.tear_journal_line():
                    _write_all(fd, line[: len(line) // 2])
                    os.fsync(fd)
                    faults.kill()
                _write_all(fd, line)
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise _cannot_write(path, exc) from None
    finally:
        os.close(fd)


def read_jsonl(path: Path, *, repair: bool = True) -> list[dict[str, Any]]:
    """Rows of a journal. A last line without its newline (a write cut short by a crash) is dropped, and cut off the
    file when ``repair``; any other line that is not a JSON object is damage, refused with RunStateError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RunStateError(f"journal {path} cannot be read ({exc.strerror}); check its permissions") from None
    complete, newline, torn = data.rpartition(b"\n")
    if not newline:  # no newline at all: everything is a torn first line
        complete, torn = b"", data
    rows = []
    for n, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise RunStateError(f"journal {path} is damaged at line {n}; restore it or delete the run folder")
        rows.append(row)
    if torn and repair:
        try:
            with open(path, "r+b") as f:
                f.truncate(len(data) - len(torn))
        except OSError as exc:
            raise _cannot_write(path, exc) from None
    return rows


# --- one writer per run folder ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def folder_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created empty, never written) for the block.

    RunStateError naming the holder's pid when another process holds it, or when the folder cannot be created.
    Where ``fcntl`` does not exist (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_file = Path(lock_file)
    folder = lock_file.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunStateError(f"cannot create run folder {folder} ({reason}); choose a writable --runs-dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(os.fstat(fd).st_ino)
            who = f"pid {holder}" if holder else "another process"
            raise RunStateError(
                f"run folder {folder} is in use by {who}; wait for that run to finish or stop it "
                "(a run that was killed releases the folder by itself)"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(lock_file: Path) -> int | None:
    """The pid holding ``lock_file``'s lock (a process writing that folder); None when it is free or unknown. Reads
    /proc/locks, never locks, so looking cannot get in a run's way."""
    try:
        return _lock_holder(os.stat(lock_file).st_ino)
    except OSError:
        return None


def _lock_holder(inode: int) -> int | None:
    """The pid holding a flock on the file with ``inode``, from /proc/locks (Linux); None when unknown."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 8295 fe:00:2146552 0 EOF"; waiters have "->" after the number
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return int(fields[4]) if fields[4].isdigit() else None
    return None


def write_json_if_changed(path: Path, obj: Any) -> bool:
    """``write_json`` unless the file already holds ``obj``; whether it wrote."""
    if path.exists() and read_json(path, path.name) == json.loads(json.dumps(obj)):
        return False
    write_json(path, obj)
    return True


def write_text_if_changed(path: Path, text: str) -> bool:
    """``write_text_atomic`` unless the file already holds ``text``; whether it wrote."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True
