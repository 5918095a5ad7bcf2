"""On-disk state: atomic JSON writes, the append-only journal with its torn-tail recovery, and the folder lock."""

import errno
import json
import math
import os

import pytest

from evo_sparse.foundations import storage
from evo_sparse.foundations.errors import RunStateError
from evo_sparse.foundations.storage import (
    append_jsonl,
    folder_lock,
    read_json,
    read_jsonl,
    remove_temp_files,
    write_json,
)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_json_round_trip_and_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "state.json"
    obj = {"generation": 3, "population": ["m1:gAE", "m1:AAE"], "fitness": [0.5, None], "nested": {"a": [1, 2]}}
    write_json(path, obj)
    assert read_json(path, "state") == obj
    assert path.read_text().endswith("\n")
    write_json(path, {"generation": 4})
    assert read_json(path, "state") == {"generation": 4}
    assert leftovers(path.parent) == [] and sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_an_atomic_write_gets_the_mode_of_a_plain_new_file(tmp_path):
    """Not mkstemp's 0o600: results in a shared folder stay as readable as any other file the user writes."""
    write_json(tmp_path / "a.json", {"x": 1})
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == storage.NEW_FILE_MODE


def test_write_json_failure_at_replace_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json(path, {"generation": 1})
    old = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(RunStateError, match=r"cannot write .*state\.json \(disk full\)"):
        write_json(path, {"generation": 2})
    assert path.read_bytes() == old
    assert leftovers(tmp_path) == []


def test_write_json_failure_while_writing_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json(path, {"generation": 1})
    old = path.read_bytes()

    def interrupted(fd):
        raise KeyboardInterrupt  # a BaseException: Ctrl-C in the middle of a write

    monkeypatch.setattr(storage.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"generation": 2, "big": list(range(10_000))})
    assert path.read_bytes() == old
    assert leftovers(tmp_path) == []


def test_write_json_first_write_failure_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("nope")))
    with pytest.raises(RunStateError, match="nope"):
        write_json(tmp_path / "new.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", (math.nan, math.inf, -math.inf))
def test_write_json_refuses_nan_and_inf(tmp_path, bad):
    path = tmp_path / "state.json"
    write_json(path, {"fitness": 0.5})
    with pytest.raises(ValueError):
        write_json(path, {"fitness": bad})
    with pytest.raises(ValueError):
        write_json(tmp_path / "other.json", {"curve": [0.1, bad]})
    assert read_json(path, "state") == {"fitness": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(RunStateError, match="population .*missing"):
        read_json(tmp_path / "nope.json", "population")
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(RunStateError, match=r"logbook .*bad\.json is damaged"):
        read_json(tmp_path / "bad.json", "logbook")


# --- journal ----------------------------------------------------------------------------------------------------------

ROWS = [{"gen": 0, "index": i, "mask": f"m1:{i}", "fitness": 0.1 * i, "reason": None} for i in range(5)]


def test_journal_append_and_read_round_trip(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, ROWS[:2])
    append_jsonl(path, [])
    append_jsonl(path, ROWS[2:])
    assert read_jsonl(path) == ROWS
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(ROWS) + 1  # one compact line each
    assert [json.loads(line) for line in lines[:-1]] == ROWS


def test_journal_refuses_nan(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    append_jsonl(path, ROWS[:1])
    with pytest.raises(ValueError):
        append_jsonl(path, [{"fitness": math.nan}])
    assert read_jsonl(path) == ROWS[:1]


@pytest.mark.parametrize("tail", (b'{"gen": 0, "ind', b'{"gen": 0}', b"{", b"\xff\xfe"))
def test_torn_last_line_is_ignored_and_cut_off(tmp_path, tail):
    path = tmp_path / "evaluations.jsonl"
    append_jsonl(path, ROWS[:3])
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)  # a crash in the middle of the next append: no newline
    assert read_jsonl(path) == ROWS[:3]
    assert path.read_bytes() == good  # truncated back to the last complete line
    append_jsonl(path, ROWS[3:])
    assert read_jsonl(path) == ROWS  # the next append produces a valid journal
    assert path.read_bytes() == good + b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in ROWS[3:])


def test_torn_tail_on_the_only_line(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    path.write_bytes(b'{"gen": 0, "fi')
    assert read_jsonl(path) == []
    assert path.read_bytes() == b""
    append_jsonl(path, ROWS[:1])
    assert read_jsonl(path) == ROWS[:1]


def test_damaged_last_terminated_line_is_refused(tmp_path):
    """A line is appended with its newline in one write, so a crash never leaves a damaged line that ends in one."""
    path = tmp_path / "evaluations.jsonl"
    append_jsonl(path, ROWS[:2])
    with open(path, "ab") as f:
        f.write(b'{"gen": 0, "in\n')
    before = path.read_bytes()
    with pytest.raises(RunStateError, match="damaged at line 3"):
        read_jsonl(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("bad_line", (b'{"gen": 0, "in', b"not json", b"", b"\x00\x00\x00"))
def test_damage_in_the_middle_is_refused(tmp_path, bad_line):
    path = tmp_path / "evaluations.jsonl"
    lines = [json.dumps(r).encode() for r in ROWS]
    lines[1] = bad_line
    path.write_bytes(b"\n".join(lines) + b"\n")
    before = path.read_bytes()
    with pytest.raises(RunStateError, match="damaged at line 2"):
        read_jsonl(path)
    assert path.read_bytes() == before  # nothing is cut off when the damage is not a torn tail


def test_damage_before_a_torn_tail_is_refused(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    append_jsonl(path, ROWS[:2])
    with open(path, "ab") as f:
        f.write(b"garbage\n" + json.dumps(ROWS[2]).encode()[:10])
    with pytest.raises(RunStateError):
        read_jsonl(path)


def test_no_temp_files_after_many_writes(tmp_path):
    path = tmp_path / "state.json"
    for i in range(20):
        write_json(path, {"generation": i})
    assert read_json(path, "state") == {"generation": 19}
    assert os.listdir(tmp_path) == ["state.json"]


# --- failures of the disk, and what a crash leaves --------------------------------------------------------------------


def no_space(after: int = 0):
    """An ``os.write`` that writes ``after`` bytes in all, then fails as a full disk does."""
    left = [after]
    real = os.write

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    return write


def test_full_disk_while_writing_json_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json(path, {"generation": 1})
    old = path.read_bytes()
    monkeypatch.setattr(storage.os, "write", no_space(after=5))
    with pytest.raises(RunStateError, match=r"cannot write .*state\.json \(No space left on device\); free some space"):
        write_json(path, {"generation": 2, "big": list(range(1000))})
    assert path.read_bytes() == old and leftovers(tmp_path) == []


@pytest.mark.parametrize("after", (0, 7))  # nothing of the line written, or part of it
def test_full_disk_while_appending_leaves_the_journal_as_it_was(tmp_path, monkeypatch, after):
    path = tmp_path / "evaluations.jsonl"
    append_jsonl(path, ROWS[:2])
    before = path.read_bytes()
    monkeypatch.setattr(storage.os, "write", no_space(after=after))
    with pytest.raises(RunStateError, match="No space left on device"):
        append_jsonl(path, ROWS[2:])
    monkeypatch.undo()
    assert path.read_bytes() == before  # a partial line is cut off again
    assert read_jsonl(path) == ROWS[:2]


def test_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RunStateError, match="cannot write .*a-file/runs/state.json"):
        write_json(blocker / "runs" / "state.json", {"a": 1})
    with pytest.raises(RunStateError, match="cannot write"):
        append_jsonl(blocker / "evaluations.jsonl", ROWS[:1])
    with pytest.raises(RunStateError, match="cannot create run folder .*a-file/runs"):
        with folder_lock(blocker / "runs" / "lock"):
            pass
    assert blocker.read_text() == "not a folder"


def test_a_line_that_is_json_but_not_an_object_is_damage(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n" + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(RunStateError, match="damaged at line 2"):
        read_jsonl(path)


def test_reading_without_repair_leaves_a_torn_tail(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    append_jsonl(path, ROWS[:2])
    with open(path, "ab") as f:
        f.write(b'{"gen": 0, "ind')
    before = path.read_bytes()
    assert read_jsonl(path, repair=False) == ROWS[:2]
    assert path.read_bytes() == before


def test_temp_files_left_by_a_crash_are_removed(tmp_path):
    write_json(tmp_path / "checkpoint.json", {"a": 1})
    (tmp_path / ".checkpoint.json.abc123.tmp").write_text('{"half')
    (tmp_path / "notes.tmp").write_text("not ours: no leading dot")
    assert remove_temp_files(tmp_path) == [".checkpoint.json.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "notes.tmp"]


def test_folder_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    lock = tmp_path / "run" / "lock"
    with folder_lock(lock):
        assert lock.exists() and lock.read_bytes() == b""
        with pytest.raises(RunStateError, match=rf"run folder .*run is in use by pid {os.getpid()}; wait"):
            with folder_lock(lock):  # a second open file: flock refuses it even within one process
                pass
    with folder_lock(lock):  # released when the block ends
        pass
    assert lock.read_bytes() == b""
