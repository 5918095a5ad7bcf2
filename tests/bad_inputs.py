"""Bad inputs for ``evo-sparse run``: settings, data sets, edited state files and runs folders, each of which must
stop the command with exit code 2 and one ``evo-sparse: error:`` line, leaving every file as it was. Shared by
tests/test_reliability.py and scripts/reliability_report.py."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from click.testing import CliRunner
from reliability import EXIT_INTERRUPTED, arguments, run_in_process, state_files

from evo_sparse import __version__
from evo_sparse.cli import cli
from evo_sparse.foundations import faults, storage
from evo_sparse.runs import checkpoint


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``prepare(workdir, base_runs)`` sets the stage and returns the extra CLI arguments; ``needle``
    must appear in the one error line; ``patch`` (optional) is active while the command runs."""

    name: str
    prepare: Callable[[Path, Path], list[str]]
    needle: str
    patch: Callable[[], contextlib.AbstractContextManager] | None = None


def _args(*args: str) -> Callable[[Path, Path], list[str]]:
    return lambda workdir, base: list(args)


BASE_OPTIONS = {"workers": 1, "train_images": 64}  # the half-finished base run: cheap evaluations


def _base_args(runs: Path) -> list[str]:
    return arguments(dict(BASE_OPTIONS, runs_dir=runs))[4:]  # without "run --preset smoke --quiet"


def _edit_state(name: str, edit: Callable) -> Callable[[Path, Path], list[str]]:
    """Copy the half-finished base run into ``workdir`` and pass the named file's path to ``edit``."""

    def prepare(workdir: Path, base: Path) -> list[str]:
        runs = workdir / "runs"
        shutil.copytree(base, runs)
        (folder,) = runs.glob("*/seed_0")
        edit(folder / name)
        return _base_args(runs)

    return prepare


def _json_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        obj = json.loads(path.read_text())
        change(obj)
        path.write_text(json.dumps(obj, indent=1))

    return edit


def _lines_edit(change: Callable[[list[bytes]], list[bytes]]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(b"".join(line + b"\n" for line in change(path.read_bytes().splitlines())))


def _other_network_mask(ckpt: dict) -> None:
    from evo_sparse.models import wrn
    from evo_sparse.models.masks import Layout, Mask, sample

    layout = Layout.from_units(wrn.units(16, 1))
    ckpt["population"][0]["mask"] = Mask(layout, tuple(sample(layout, 0.5))).encode()


def _archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _data(make: Callable[[Path], None], name: str) -> Callable[[Path, Path], list[str]]:
    def prepare(workdir: Path, base: Path) -> list[str]:
        target = workdir / name
        make(target)
        return ["--preset", "cpu", "--data", str(target), "--runs-dir", str(workdir / "runs")]

    return prepare


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _runs_dir(make: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda workdir, base: ["--runs-dir", str(make(workdir))]


def _a_file(workdir: Path) -> Path:
    (workdir / "a-file").write_text("I am a file, not a folder\n")
    return workdir / "a-file"


def copy_base(workdir: Path, base: Path) -> list[str]:
    shutil.copytree(base, workdir / "runs")
    return _base_args(workdir / "runs")


def _failing(target: str, err: int) -> Callable[[], contextlib.AbstractContextManager]:
    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    return lambda: mock.patch(target, side_effect=fail)


BAD_INPUTS: list[BadInput] = [
    # settings: out of range, wrong type, unknown names
    BadInput("pop below 2", _args("--pop", "1"), "--pop must be at least 2"),
    BadInput("keep not below pop", _args("--keep", "6"), "--keep must be in 1..pop-1"),
    BadInput("sparsity 1", _args("--sparsity", "1.0"), "--sparsity must be in [0, 1)"),
    BadInput("negative sparsity", _args("--sparsity", "-0.1"), "--sparsity"),
    BadInput("no generations", _args("--generations", "0"), "--generations must be at least 1"),
    BadInput("depth not 6n+4", _args("--depth", "15"), "--depth must be 6n+4"),
    BadInput("width 0", _args("--width", "0"), "--width must be at least 1"),
    BadInput("pop not a number", _args("--pop", "many"), "'many' is not a valid integer"),
    BadInput("seed not an integer", _args("--seed", "1.5"), "--seed"),
    BadInput("lr 0", _args("--lr", "0"), "--lr must be positive"),
    BadInput("batch larger than the budget", _args("--train-images", "8"), "--train-images must be at least"),
    BadInput("negative workers", _args("--workers", "-1"), "--workers must be 0"),
    BadInput("failed share above 1", _args("--max-failed-share", "1.5"), "--max-failed-share must be in [0, 1]"),
    BadInput("validation size not a multiple of 10", _args("--val-size", "7"), "--val-size"),
    BadInput("unknown device", _args("--device", "tpu"), "--device must be auto, cpu, cuda or cuda:N"),
    BadInput("absent CUDA device", _args("--device", "cuda:99"), "--device cuda:99"),
    BadInput("unknown preset", _args("--preset", "huge"), "--preset"),
    BadInput("unknown algorithm", _args("--algorithm", "annealing"), "--algorithm"),
    BadInput("unknown sampling", _args("--sampling", "bernoulli"), "--sampling"),
    BadInput("unknown crossover operator", _args("--crossover", "onepoint"), "--crossover"),
    BadInput("unknown dataset", _args("--dataset", "mnist"), "--dataset"),
    # data
    BadInput("missing data set", _args("--preset", "cpu", "--data", "/nonexistent/cifar"), "/nonexistent/cifar"),
    BadInput("folder that is not CIFAR-10", _data(lambda p: p.mkdir(), "empty"), "is not a CIFAR-10 copy"),
    BadInput(
        "corrupt archive",
        _data(lambda p: p.write_bytes(os.urandom(4096)), "broken.tar.gz"),
        "cannot be read",
    ),
    BadInput(
        "archive failing its checksum",
        _data(lambda p: _archive(p, {"x.txt": b"x"}), "cifar10-jpeg.tar.gz"),
        "is corrupt (SHA-256",
    ),
    BadInput(
        "incomplete archive",
        _data(lambda p: _archive(p, {"cifar/train/cat/1.jpg": _tiny_jpeg()}), "part.tar.gz"),
        "has 0 images, expected 5000",
    ),
    # state files of a half-finished run
    BadInput(
        "truncated checkpoint",
        _edit_state("checkpoint.json", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
        "checkpoint.json is damaged",
    ),
    BadInput("checkpoint not JSON", _edit_state("checkpoint.json", lambda p: p.write_text("{not json")), "is damaged"),
    BadInput(
        "checkpoint of another schema",
        _edit_state("checkpoint.json", _json_edit(lambda c: c.update(schema=1))),
        f"has schema 1, this evo-sparse ({__version__}) reads schema",
    ),
    BadInput(
        "checkpoint of another run",
        _edit_state("checkpoint.json", _json_edit(lambda c: c["settings"].update({"search.sparsity": 0.8}))),
        "belongs to another run (search.sparsity 0.8 there, 0.5 here)",
    ),
    BadInput(
        "checkpoint mask of another network",
        _edit_state("checkpoint.json", _json_edit(_other_network_mask)),
        "mask was made for another network",
    ),
    BadInput(
        "checkpoint population of the wrong size",
        _edit_state("checkpoint.json", _json_edit(lambda c: c["population"].pop())),
        "its population holds 5 masks, the run's --pop is 6",
    ),
    BadInput(
        "checkpoint RNG state edited",
        _edit_state("checkpoint.json", _json_edit(lambda c: c["rng"]["python"][1].pop())),
        "checkpoint.json is damaged",
    ),
    BadInput(
        "checkpoint logbook edited",
        _edit_state("checkpoint.json", _json_edit(lambda c: c["logbook"][0].update(nevals=5))),
        "disagrees with its logbook",
    ),
    BadInput(
        "journal damaged in the middle",
        _edit_state("evaluations.jsonl", _lines_edit(lambda lines: lines[:2] + [b"garbage"] + lines[3:])),
        "is damaged at line 3",
    ),
    BadInput(
        "journal cut short",
        _edit_state("evaluations.jsonl", _lines_edit(lambda lines: lines[:2])),
        "holds 2 evaluations but the checkpoint counts 6",
    ),
    BadInput(
        "journal row of another schema",
        _edit_state(
            "evaluations.jsonl",
            _lines_edit(lambda lines: [lines[0].replace(b'"schema":2', b'"schema":1')] + lines[1:]),
        ),
        "line 1 of the journal",
    ),
    BadInput("config.json not JSON", _edit_state("config.json", lambda p: p.write_text("{")), "run config"),
    BadInput(
        "config.json of other settings",
        _edit_state("config.json", _json_edit(lambda c: c["search"].update(sparsity=0.8))),
        "was written by other settings (search.sparsity 0.8 there, 0.5 here)",
    ),
    BadInput(
        "config.json of another schema",
        _edit_state("config.json", _json_edit(lambda c: c.pop("schema"))),
        "has no schema version",
    ),
    # the runs folder
    BadInput("runs folder is a file", _runs_dir(_a_file), "cannot create run folder"),
    BadInput("runs folder under a file", _runs_dir(lambda w: _a_file(w) / "runs"), "cannot create run folder"),
    BadInput(
        "runs folder not writable",
        copy_base,
        "(Permission denied)",
        patch=_failing("evo_sparse.foundations.storage.tempfile.mkstemp", errno.EACCES),
    ),
    BadInput(
        "disk full",
        copy_base,
        "(No space left on device); free some space",
        patch=_failing("evo_sparse.foundations.storage.os.write", errno.ENOSPC),
    ),
]


def half_finished_base(workdir: Path) -> Path:
    """A runs folder holding a smoke run stopped by Ctrl-C after generation 0's checkpoint and 3 evaluations of
    generation 1 (made in this process: the second checkpoint save raises KeyboardInterrupt)."""
    runs = workdir / "base"
    save = checkpoint.save
    calls = []

    def save_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        save(*args, **kwargs)

    with mock.patch.object(checkpoint, "save", save_then_interrupt):
        result = run_in_process(dict(BASE_OPTIONS, runs_dir=runs))
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    return runs


@dataclass
class Rejection:
    name: str
    exit_code: int
    stderr: str
    one_line: bool
    needle_found: bool
    files_unchanged: bool

    @property
    def clean(self) -> bool:
        return self.exit_code == 2 and self.one_line and self.needle_found and self.files_unchanged


def reject(case: BadInput, workdir: Path, base: Path) -> Rejection:
    """Run the command on ``case`` and report how it was refused."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = ["run", "--preset", "smoke", "--quiet", "--runs-dir", str(workdir / "runs")] + case.prepare(workdir, base)
    before = state_files(workdir)
    with mock.patch.dict(os.environ, {"EVO_SPARSE_CACHE": str(workdir / "cache")}):
        os.environ.pop(faults.ENV, None)
        with case.patch() if case.patch else contextlib.nullcontext():
            result = CliRunner().invoke(cli, args)
    lines = result.stderr.strip().splitlines()
    return Rejection(
        name=case.name,
        exit_code=result.exit_code,
        stderr=result.stderr.strip(),
        one_line=len(lines) == 1 and lines[0].startswith("evo-sparse: error:") and "Traceback" not in result.output,
        needle_found=bool(lines) and case.needle in lines[-1],
        files_unchanged=state_files(workdir) == before,
    )


def in_use_rejection(workdir: Path, base: Path) -> Rejection:
    """The base run's folder locked by this process (as another run would hold it): a run of it is refused."""
    args = copy_base(workdir, base)
    (folder,) = (workdir / "runs").glob("*/seed_0")
    before = state_files(workdir)
    with storage.folder_lock(folder / "lock"):
        result = CliRunner().invoke(cli, ["run", "--preset", "smoke", "--quiet", *args])
    lines = result.stderr.strip().splitlines()
    return Rejection(
        name="run folder in use",
        exit_code=result.exit_code,
        stderr=result.stderr.strip(),
        one_line=len(lines) == 1 and lines[0].startswith("evo-sparse: error:"),
        needle_found=bool(lines) and f"is in use by pid {os.getpid()}" in lines[-1],
        files_unchanged=state_files(workdir) == before,
    )
