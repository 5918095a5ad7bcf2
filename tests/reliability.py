"""The reliability harness that tests/test_reliability.py and scripts/reliability_report.py share.

- ``kill_campaign``: runs ``evo-sparse run --preset smoke ...`` as a subprocess, kills it (SIGKILL at a seeded random
  moment, SIGKILL from inside a write through the ``EVO_SPARSE_FAULT`` hooks, or Ctrl-C), starts the same command
  again until the run finishes, and compares the result with an uninterrupted run of the same command.
- ``injected_failures``: a run whose evaluations fail at a seeded rate, checked record by record.
- ``sigterm_campaign``: runs with worker processes stopped by SIGTERM to their process group (as Slurm or Kubernetes
  stop a job) at seeded moments, resumed and compared with an uninterrupted run.
- ``hung_workers``: a run whose workers hang (``hang=P``) on chosen masks: each must be noticed past ``--eval-timeout``,
  killed and retried, and the run must end with the local backend's results.
- ``final_campaign``: ``evo-sparse final`` on worker processes with workers killed (by the ``crash=P`` hook and from
  outside, mid-training) and stopped by SIGTERM, each compared with an uninterrupted final training.
(The bad inputs are in tests/bad_inputs.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from click.testing import CliRunner

from evo_sparse.cli import build_config, cli
from evo_sparse.execution import process
from evo_sparse.foundations import faults
from evo_sparse.foundations.paths import result_files, run_folder
from evo_sparse.runs.run import read_config
from evo_sparse.study import final as final_training

EXIT_INTERRUPTED = 130  # the CLI's exit code after Ctrl-C
EXIT_TERMINATED = 143  # and after SIGTERM (128 + 15, what schedulers expect)


# --- running the command ----------------------------------------------------------------------------------------------


def arguments(options: dict) -> list[str]:
    """``run --preset smoke --quiet`` plus ``--name value`` for each option (``runs_dir`` -> ``--runs-dir``)."""
    args = ["run", "--preset", "smoke", "--quiet"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def config_of(options: dict):
    return build_config("smoke", {k: str(v) if k == "runs_dir" else v for k, v in options.items()})


def folder_of(options: dict) -> Path:
    return run_folder(config_of(options))


def command() -> list[str]:
    """The installed ``evo-sparse`` script beside this Python, else the same entry point through ``python -c``."""
    script = Path(sys.executable).with_name("evo-sparse")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from evo_sparse.cli import main; main()"]


def as_a_terminal_job() -> None:
    """In the child, before it starts: SIGINT and SIGTERM at their defaults, as for a job started from a terminal.

    A shell starts a background job of a script with SIGINT ignored, and a program keeps a signal its parent ignored
    ignored (Python too: it installs its Ctrl-C handler only where SIGINT is not ignored). A test suite started that
    way, as CI harnesses do, passed that on to the run it started, which then never saw the test's Ctrl-C and finished
    with exit 0: the "lost Ctrl-C". ``timeout`` resets SIGINT for its command, which is why it was never seen under it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def environment(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if fault:
        env[faults.ENV] = fault
    return env


def run_in_process(options: dict, env: dict[str, str] | None = None):
    """The same command through click's runner in this process (no interpreter start-up)."""
    with mock.patch.dict(os.environ, env or {}, clear=False):
        if env is None:
            os.environ.pop(faults.ENV, None)
        return CliRunner().invoke(cli, arguments(options))


# --- what a run computed ----------------------------------------------------------------------------------------------


def journal_lines(folder: Path) -> list[bytes]:
    """The journal's complete lines (a torn last line is not one)."""
    path = folder / "evaluations.jsonl"
    data = path.read_bytes() if path.exists() else b""
    return data.split(b"\n")[:-1]


def without(obj, keys: tuple[str, ...]):
    """``obj`` (parsed JSON) with the dict entries named ``keys`` dropped at every depth."""
    if isinstance(obj, dict):
        return {k: without(v, keys) for k, v in obj.items() if k not in keys}
    return [without(v, keys) for v in obj] if isinstance(obj, list) else obj


def results(folder: Path) -> dict:
    """Settings, journal rows in (gen, index) order and checkpoint, without wall-clock ``seconds``."""
    journal = sorted((json.loads(line) for line in journal_lines(folder)), key=lambda r: (r["gen"], r["index"]))
    return without(
        {
            "config": read_config(folder / "config.json").hashed_items(),
            "journal": journal,
            "checkpoint": json.loads((folder / "checkpoint.json").read_text()),
        },
        ("seconds",),
    )


def state_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- processes --------------------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def workers_of(pid: int) -> list[int]:
    """The spawned worker processes below ``pid`` (multiprocessing's resource tracker is not one), lowest pid first."""
    found = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def survivors(pids: list[int], wait_s: float = 10.0) -> list[int]:
    """The processes of ``pids`` still running after up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@dataclass
class Cycle:
    """One start of the command: how it ended and what it left."""

    how: str  # "finished", "SIGKILL after 2.31 s", "fault kill-mid-journal=2", "Ctrl-C"
    returncode: int
    rows_before: int
    rows_after: int
    stderr: str
    pid: int
    children: int  # processes below it when it was stopped
    orphans: list[int]  # of those, the ones still running 10 s later
    journal: bytes  # the journal's complete lines when this start ended
    torn: bool  # the journal ended in a partial line
    files: list[str]  # names in the run folder when this start ended
    probe: str | None = None  # what a second run of the same command said while this one ran

    @property
    def leftovers(self) -> list[str]:
        return [name for name in self.files if name.startswith(".") and name.endswith(".tmp")]

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def finished(self) -> bool:
        return self.returncode == 0


def start(args: list[str], fault: str | None = None) -> subprocess.Popen:
    """``evo-sparse ARGS`` as a terminal's job, in its own process group (a Ctrl-C or SIGTERM for it alone)."""
    return subprocess.Popen(
        command() + args,
        env=environment(fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=as_a_terminal_job,
    )


def cycle(
    options: dict,
    *,
    delay: float | None = None,
    fault: str | None = None,
    after_rows: int | None = None,
    interrupt: bool = False,
    terminate: bool = False,
    probe: bool = False,
    timeout: float = 300.0,
) -> Cycle:
    """Start the command once; stop it ``delay`` seconds after its start, or after it has journaled ``after_rows``
    more rows (and ``delay`` seconds more, when both are given), with SIGKILL (or Ctrl-C: SIGINT to its process
    group, as a terminal sends it; ``terminate``: SIGTERM to its process group, as a scheduler sends it); with
    ``fault``, let the ``EVO_SPARSE_FAULT`` hook kill it; with none of these, let it finish. ``probe`` runs the same
    command a second time while the first one is computing and records what it said."""
    folder = folder_of(options)
    before = len(journal_lines(folder))
    proc = start(arguments(options), fault)
    said, kids, how = None, [], "finished" if fault is None else f"fault {fault}"
    deadline = time.monotonic() + timeout
    if after_rows is not None:
        while len(journal_lines(folder)) < before + after_rows and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    if delay is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)
    if proc.poll() is None and (delay is not None or after_rows is not None):
        if probe:
            result = run_in_process(options)
            said = f"exit {result.exit_code}: {result.stderr.strip()}"
        kids = descendants(proc.pid)
        if interrupt:
            os.killpg(proc.pid, signal.SIGINT)
            how = "Ctrl-C"
        elif terminate:
            os.killpg(proc.pid, signal.SIGTERM)  # every process of the job, as Slurm or Kubernetes signal it
            how = "SIGTERM"
        else:
            proc.kill()
            how = (
                "SIGKILL"
                + (f" {delay:.2f} s" if delay is not None else "")
                + (f" after {after_rows} new journal row(s)" if after_rows is not None else " after its start")
            )
    try:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return _ended(folder, how, proc.returncode, before, err.decode(), proc.pid, kids, said)


def finish_in_process(options: dict) -> Cycle:
    """Resume the run and finish it in this process (no interpreter start-up, ``--workers 1``: same results)."""
    folder = folder_of(options)
    before = len(journal_lines(folder))
    result = run_in_process(dict(options, workers=1))
    return _ended(folder, "finished in this process", result.exit_code, before, result.stderr, os.getpid(), [], None)


def _ended(folder: Path, how: str, code: int, before: int, stderr: str, pid: int, kids: list[int], said) -> Cycle:
    lines = journal_lines(folder)
    path = folder / "evaluations.jsonl"
    return Cycle(
        how=how,
        returncode=code,
        rows_before=before,
        rows_after=len(lines),
        stderr=stderr,
        pid=pid,
        children=len(kids),
        orphans=survivors(kids),
        journal=b"".join(line + b"\n" for line in lines),
        torn=path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n"),
        files=sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [],
        probe=said,
    )


# --- the kill campaign ------------------------------------------------------------------------------------------------


@dataclass
class RunCheck:
    """One run folder killed and resumed until it finished, compared with an uninterrupted run."""

    seed: int
    folder: Path
    cycles: list[Cycle]
    identical: bool
    rows_per_slot: Counter  # journal rows per (gen, index): all 1
    generations: list[int]  # logbook generations: 0..G-1
    kept_prefixes: bool  # every journal line there was after a kill is still there, unchanged, in the end
    temp_files: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(c.killed for c in self.cycles)

    @property
    def ok(self) -> bool:
        return not self.problems


SKIPPED = "generations duplicated or skipped"
_baselines: dict[tuple, dict] = {}


def baseline(options: dict, workdir: Path) -> dict:
    """``results`` of the uninterrupted run of ``options`` (in this process; ``workers`` does not change results)."""
    cfg = config_of(options)
    key = (cfg.run_hash(), cfg.seed)
    if key not in _baselines:
        opts = dict(options, runs_dir=workdir / f"baseline-{len(_baselines)}", workers=1)
        result = run_in_process(opts)
        assert result.exit_code == 0, result.output
        _baselines[key] = results(folder_of(opts))
    return _baselines[key]


def check_run(
    options: dict, cycles: list[Cycle], workdir: Path, *, codes: tuple[int, ...] = (0, -9, 130, 143)
) -> RunCheck:
    """Compare the finished run of ``options`` with the uninterrupted one; ``codes``: the exit codes its starts may
    have ended with (negative: killed by that signal)."""
    folder = folder_of(options)
    final = (folder / "evaluations.jsonl").read_bytes()
    slots = Counter((row["gen"], row["index"]) for row in map(json.loads, journal_lines(folder)))
    got = results(folder)
    generations = [entry["gen"] for entry in got["checkpoint"]["logbook"]]
    check = RunCheck(
        seed=options.get("seed", 0),
        folder=folder,
        cycles=cycles,
        identical=got == baseline(options, workdir),
        rows_per_slot=slots,
        generations=generations,
        kept_prefixes=all(final.startswith(c.journal) for c in cycles),
        temp_files=[p.name for p in folder.glob(".*.tmp")],
    )
    expected_gens = list(range(config_of(options).search.generations))
    for problem, bad in (
        ("result differs from the uninterrupted run", not check.identical),
        ("a (gen, index) has more than one journal row", any(n != 1 for n in slots.values())),
        (SKIPPED, generations != expected_gens),
        ("journal rows written before a kill were lost", not check.kept_prefixes),
        ("temp files left in the run folder", bool(check.temp_files)),
        ("worker processes outlived a killed run", any(c.orphans for c in cycles)),
        ("a start neither finished nor died as intended", any(c.returncode not in codes for c in cycles)),
    ):
        if bad:
            check.problems.append(problem)
    return check


def kill_campaign(
    workdir: Path,
    options: dict,
    *,
    kills: int,
    seed: int,
    max_delay: float,
    fault_points: tuple[str, ...] = (),
    probe_lock: bool = False,
    finish_here: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> list[RunCheck]:
    """Kill runs of ``options`` until ``kills`` random SIGKILLs and every fault point have hit, resuming each run with
    the same command until it finishes; a run that finishes before the kills are done is followed by one with the next
    seed. Random moments alternate: uniform in [0, ``max_delay``] s after the start (start-up included), and uniform
    in [0, 3] s after the first new journal row (evaluations and checkpoint writes under way).
    ``probe_lock``: the first kill waits for a journal row, checks that a second run is refused, then kills.
    ``finish_here``: the last start of each run, the one not killed, runs in this process (saves a start-up)."""
    rng = random.Random(seed)
    checks: list[RunCheck] = []
    points = list(fault_points)
    random_kills, run_seed = 0, int(options.get("seed", 0))
    while random_kills < kills or points:
        opts = dict(options, seed=run_seed, runs_dir=workdir / f"runs-{run_seed}")
        cycles: list[Cycle] = []
        while not cycles or not cycles[-1].finished:
            if points:
                c = cycle(opts, fault=points.pop(0))
            elif probe_lock and random_kills == 0:
                c = cycle(opts, after_rows=1, probe=True)
                random_kills += c.killed
            elif random_kills < kills and random_kills % 2 == 0:
                c = cycle(opts, delay=rng.uniform(0.0, max_delay))
                random_kills += c.killed
            elif random_kills < kills:
                c = cycle(opts, after_rows=1, delay=rng.uniform(0.0, 3.0))
                random_kills += c.killed
            else:
                c = finish_in_process(opts) if finish_here else cycle(opts)
            log(f"  seed {run_seed}: {c.how}: exit {c.returncode}, journal {c.rows_before} -> {c.rows_after} rows")
            cycles.append(c)
            if len(cycles) > 3 * kills + 20:
                raise RuntimeError(f"run never finished: {c.stderr[-500:]}")
        checks.append(check_run(opts, cycles, workdir))
        run_seed += 1
    return checks


# --- injected evaluation failures -------------------------------------------------------------------------------------


@dataclass
class FailureCheck:
    rate: float
    evaluations: int
    injected: int  # evaluations the hook failed (raise or NaN)
    recorded: int  # of those, recorded as failed with the hook's reason
    wrongly_failed: int  # evaluations the hook left alone that failed anyway
    oom_injected: int  # evaluations the hook made run out of memory at the full batch size
    oom_retried: int  # of those, the ones that succeeded at half the batch
    failed_in_best: int  # failed masks in the hall of fame
    best_is_best_ok: bool  # the best is the best successful evaluation of the journal
    exit_code: int


def injected_failures(workdir: Path, rate: float, *, pop: int = 20, generations: int = 2) -> FailureCheck:
    """A run (in this process) whose evaluations raise (rate/2) or give NaN (rate/2), and 10% of which run out of
    memory once; checks every record against the hook's seeded decision."""
    spec = f"fail={rate / 2},nan={rate / 2},oom=0.1"
    options = {
        "pop": pop,
        "generations": generations,
        "train_images": 32,
        "workers": 1,
        "max_failed_share": 1,
        "runs_dir": workdir / f"failures-{rate}",
    }
    result = run_in_process(options, env={faults.ENV: spec})
    folder = folder_of(options)
    rows = [json.loads(line) for line in journal_lines(folder)]
    with mock.patch.dict(os.environ, {faults.ENV: spec}):
        kinds = [faults.fitness_fault(0, row["mask"]) for row in rows]
    reasons = {"fail": "RuntimeError: injected failure", "nan": "validation accuracy nan"}
    injected = [(row, kind) for row, kind in zip(rows, kinds) if kind in reasons]
    ckpt = json.loads((folder / "checkpoint.json").read_text())
    failed_masks = {row["mask"] for row in rows if row["status"] != "ok"}
    best_ok = max((row["fitness"] for row in rows if row["status"] == "ok"), default=None)
    hof = ckpt["hall_of_fame"]
    return FailureCheck(
        rate=rate,
        evaluations=len(rows),
        injected=len(injected),
        recorded=sum(
            row["status"] == "failed" and row["fitness"] is None and str(row["reason"]).startswith(reasons[kind])
            for row, kind in injected
        ),
        wrongly_failed=sum(row["status"] != "ok" for row, kind in zip(rows, kinds) if kind not in reasons),
        oom_injected=kinds.count("oom"),
        oom_retried=sum(row["status"] == "ok" and row["batch_size"] == 16 for row, k in zip(rows, kinds) if k == "oom"),
        failed_in_best=sum(entry["mask"] in failed_masks for entry in hof),
        best_is_best_ok=bool(hof) and hof[0]["record"]["fitness"] == best_ok,
        exit_code=result.exit_code,
    )


# --- SIGTERM ----------------------------------------------------------------------------------------------------------

TERMINATED = "evo-sparse: terminated (SIGTERM); finished evaluations are saved, run the same command to resume"


def stopped_cleanly(returncode: int, stderr: str) -> bool:
    """Ended by its SIGTERM as a scheduler expects: exit 143, ``TERMINATED`` as the last line, no traceback."""
    return (
        returncode == EXIT_TERMINATED and stderr.strip().splitlines()[-1:] == [TERMINATED] and "Traceback" not in stderr
    )


def sigterm_campaign(
    workdir: Path,
    options: dict,
    *,
    stops: int,
    seed: int,
    max_delay: float,
    log: Callable[[str], None] = lambda _: None,
) -> list[tuple[float, RunCheck]]:
    """``stops`` runs of ``options`` (each in its own runs folder), each stopped once by SIGTERM to its process group
    at a seeded moment, alternately uniform in [0, ``max_delay``] s after its start and in [0, 3] s after its first
    new journal row, then finished in this process and compared with an uninterrupted run; (delay, check) each. A run
    that finishes before its signal is replaced by another. A SIGTERM before the CLI's handler is installed (the
    interpreter's start-up) kills the process by the signal (-15): accepted when the run resumes."""
    rng = random.Random(seed)
    checks: list[tuple[float, RunCheck]] = []
    attempt = 0
    while len(checks) < stops:
        opts = dict(options, runs_dir=workdir / f"runs-{attempt}")
        after_start = len(checks) % 2 == 0
        delay = rng.uniform(0.0, max_delay if after_start else 3.0)
        rows = None if after_start else 1
        stopped = cycle(opts, after_rows=rows, delay=delay, terminate=True)
        attempt += 1
        when = f"{delay:.2f} s after its {'start' if after_start else 'first new journal row'}"
        log(f"  run {attempt}: SIGTERM {when}: exit {stopped.returncode}, {stopped.rows_after} journal rows")
        if stopped.finished:  # the signal came after the end
            if attempt > 2 * stops + 5:
                raise RuntimeError("runs keep finishing before their SIGTERM; lower the delays")
            continue
        finished = finish_in_process(opts)
        checks.append(
            (delay, check_run(opts, [stopped, finished], workdir, codes=(0, EXIT_TERMINATED, -signal.SIGTERM)))
        )
    return checks


# --- hung workers -----------------------------------------------------------------------------------------------------


@dataclass
class HangCheck:
    """One run with hung workers: what was expected to hang, what was noticed, and how the run ended."""

    seed: int
    timeout: float  # --eval-timeout, s
    evaluations: int
    expected: int  # evaluations whose first attempt hangs (``hang=P`` chooses by run seed and mask)
    noticed: list[tuple[float, float]]  # (s without an answer, limit) of every worker killed as hung
    retried: int  # journal rows with one retry
    identical: bool  # everything computed equals the local backend's run (``seconds`` and ``retries`` aside)
    exit_code: int
    stderr: str

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and self.expected == len(self.noticed) == self.retried > 0
            and self.identical
            and all(seconds >= limit for seconds, limit in self.noticed)
        )


def hung_workers(workdir: Path, seed: int, *, hangs: int = 2, timeout: float = 10.0, workers: int = 2) -> HangCheck:
    """A smoke run with ``workers`` worker processes (started from this process, through click's runner) whose first
    attempt at the ``hangs`` masks with the lowest ``hang=`` draws hangs for ever, under ``--eval-timeout timeout``
    (not much below 10 s on a busy machine: a new worker's first evaluation can take several seconds)."""
    local = baseline({"seed": seed}, workdir)
    draws = sorted({faults.crash_draw(seed, row["mask"]) for row in local["journal"]})
    share = (draws[hangs - 1] + draws[hangs]) / 2
    options = {"seed": seed, "backend": "process", "workers": workers, "eval_timeout": timeout}
    options["runs_dir"] = workdir / f"hung-{seed}"
    noticed: list[tuple[float, float]] = []
    lost = process.ProcessMap._lost

    def spy(pool, slot, task, todo, hung=None):
        if hung:
            noticed.append(hung)
        return lost(pool, slot, task, todo, hung)

    with mock.patch.object(process.ProcessMap, "_lost", spy):
        result = run_in_process(options, env={faults.ENV: f"hang={share}"})
    folder = folder_of(options)
    rows = [json.loads(line) for line in journal_lines(folder)]
    done = result.exit_code == 0
    return HangCheck(
        seed=seed,
        timeout=timeout,
        evaluations=len(rows),
        expected=sum(faults.crash_draw(seed, row["mask"]) < share for row in local["journal"]),
        noticed=noticed,
        retried=sum(row["retries"] == 1 for row in rows),
        identical=done and without(results(folder), ("retries",)) == without(local, ("retries",)),
        exit_code=result.exit_code,
        stderr=result.stderr,
    )


# --- final training ---------------------------------------------------------------------------------------------------

TIMING = ("seconds", "epoch_seconds")  # how long a final training took, not what it computed
FINAL_JOBS = ("--final-masks", "2", "--seeds", "1")  # 2 found + 2 random networks + the dense parent, 1 seed each
WORKERS = ("--backend", "process", "--workers", "2")


def final_paths(runs_dir: Path) -> list[Path]:
    """Every final-training result file under ``runs_dir``: its runs' and its dense parents'."""
    return [p for folder in sorted(Path(runs_dir).glob("*/seed_*/final_*")) for p in result_files(folder)]


def final_files(runs_dir: Path) -> dict[str, bytes]:
    """``final_paths`` by path relative to ``runs_dir``, with their bytes."""
    return {str(p.relative_to(runs_dir)): p.read_bytes() for p in final_paths(runs_dir)}


def final_records(run_dir: Path) -> list[dict]:
    """The run's final-training records and its dense parent's, without timing fields and ``retries``."""
    return without(final_training.run_results(run_dir), (*TIMING, "retries"))


@dataclass
class FinalStart:
    """One start of ``evo-sparse final``: how it ended and what it left."""

    how: str
    returncode: int
    stderr: str
    done_before: int  # result files when it started
    done_after: int
    children: int  # processes below it when it was stopped
    orphans: list[int]  # of those, the ones still running 10 s later
    temp_files: list[str]  # temp files under the runs folder when it ended
    killed_worker: int | None = None  # the worker process SIGKILLed from outside


def final_cycle(
    run_dir: Path,
    args: tuple[str, ...] = (),
    *,
    fault: str | None = None,
    delay: float = 0.0,
    terminate: bool = False,
    kill_worker: random.Random | None = None,
    timeout: float = 600.0,
) -> FinalStart:
    """Start ``evo-sparse final RUN_DIR --quiet ARGS`` once; with ``terminate`` (SIGTERM to its process group) or
    ``kill_worker`` (SIGKILL to one of its worker processes, chosen by that generator), act ``delay`` seconds after
    its first new result file, while other trainings are under way; with neither, let it finish."""
    runs_dir = Path(run_dir).parent.parent
    before = len(final_paths(runs_dir))
    proc = start(["final", str(run_dir), "--quiet", *args], fault)
    deadline = time.monotonic() + timeout
    kids, victim, how = [], None, "finished" if fault is None else f"fault {fault}"
    if terminate or kill_worker:
        while len(final_paths(runs_dir)) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)
        if proc.poll() is None:
            kids = descendants(proc.pid)
            if terminate:
                os.killpg(proc.pid, signal.SIGTERM)
                how = f"SIGTERM {delay:.2f} s after a result"
            elif workers := workers_of(proc.pid):
                victim = kill_worker.choice(workers)
                os.kill(victim, signal.SIGKILL)
                how = f"worker {victim} SIGKILLed {delay:.2f} s after a result"
    try:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return FinalStart(
        how=how,
        returncode=proc.returncode,
        stderr=err.decode(),
        done_before=before,
        done_after=len(final_paths(runs_dir)),
        children=len(kids),
        orphans=survivors([k for k in kids if k != victim]),
        temp_files=sorted(p.name for p in runs_dir.rglob(".*.tmp")),
        killed_worker=victim,
    )


@dataclass
class FinalCheck:
    """One final training, interrupted as ``what`` says and finished, compared with an uninterrupted one."""

    what: str
    starts: list[FinalStart]
    identical: bool  # every record equals the uninterrupted final's (timing fields and ``retries`` aside)
    retries: list[int]  # per record
    retried: int  # trainings retried in a new worker, by the log's lines
    kept: bool  # every result file on disk when a start ended is unchanged at the end (none trained twice)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


RETRIED = "killed by SIGKILL during a final training; it is retried in a new worker"


def _check_final(what, run_dir, starts, expected, retries, *, kept=True, stop_clean=None) -> FinalCheck:
    """``expected``: the uninterrupted records, without timing fields and ``retries``; ``retries``: each record's
    expected retries, or an int: that many records retried once, whichever they are."""
    got = final_training.run_results(run_dir)
    check = FinalCheck(
        what=what,
        starts=starts,
        identical=without(got, (*TIMING, "retries")) == expected,
        retries=[r.get("retries", 0) for r in got],
        retried=sum(s.stderr.count(RETRIED) for s in starts),
        kept=kept,
    )
    if isinstance(retries, int):
        as_expected = sorted(check.retries) == [0] * (len(got) - retries) + [1] * retries
    else:
        as_expected = check.retries == retries
    for problem, bad in (
        ("records differ from the uninterrupted final training's", not check.identical),
        ("the last start did not finish", starts[-1].returncode != 0),
        ("records' retries differ from the workers that died", not as_expected),
        ("a SIGKILLed worker's training was not reported as retried", check.retried != sum(check.retries)),
        ("a result on disk was trained again", not kept),
        ("temp files left", any(s.temp_files for s in starts)),
        ("worker processes outlived a stopped final", any(s.orphans for s in starts)),
        ("SIGTERM did not stop it with exit 143 and one line", stop_clean is False),
    ):
        if bad:
            check.problems.append(problem)
    return check


def final_campaign(
    workdir: Path, *, kills: int, sigterms: int, crashes: int = 2, seed: int = 0, log=lambda _: None
) -> tuple[int, list[FinalCheck]]:
    """A smoke run, its final training (``FINAL_JOBS``) uninterrupted on the local backend, then again on two worker
    processes (``WORKERS``): once with the ``crashes`` masks of lowest ``crash=`` draw killing their worker at its
    first attempt, ``kills`` times with a worker SIGKILLed mid-training from outside, and ``sigterms`` times stopped by
    SIGTERM mid-training and resumed by the same command; moments seeded by ``seed``. Returns (trainings, checks)."""
    rng = random.Random(seed)
    options = {"workers": 1, "runs_dir": workdir / "runs"}
    assert run_in_process(options).exit_code == 0
    run_dir, runs_dir = folder_of(options), workdir / "runs"
    args = (*FINAL_JOBS, *WORKERS)

    def clear() -> None:
        for folder in runs_dir.glob("*/seed_*/final_*"):
            shutil.rmtree(folder)

    local = CliRunner().invoke(cli, ["final", str(run_dir), "--quiet", *FINAL_JOBS, "--backend", "local"])
    assert local.exit_code == 0, local.output
    raw = final_training.run_results(run_dir)
    expected = without(raw, (*TIMING, "retries"))
    log(f"  uninterrupted (local backend): {len(raw)} trainings")
    draws = sorted({faults.crash_draw(r["seed"], r["mask"]) for r in raw})
    share = (draws[crashes - 1] + draws[crashes]) / 2
    crashed = [int(faults.crash_draw(r["seed"], r["mask"]) < share) for r in raw]
    clear()
    hooked = final_cycle(run_dir, args, fault=f"crash={share}")
    checks = [_check_final(f"crash={share:.3f} ({sum(crashed)} trainings)", run_dir, [hooked], expected, crashed)]
    for _ in range(kills):
        clear()
        killed = final_cycle(run_dir, args, delay=rng.uniform(0.0, 2.0), kill_worker=rng)
        checks.append(_check_final(killed.how, run_dir, [killed], expected, int(killed.killed_worker is not None)))
        if f"worker process {killed.killed_worker} (cpu) {RETRIED}" not in killed.stderr:
            checks[-1].problems.append("the SIGKILLed worker was not the one reported")
    for _ in range(sigterms):
        clear()
        stopped = final_cycle(run_dir, args, delay=rng.uniform(0.0, 2.0), terminate=True)
        on_disk = final_files(runs_dir)
        resumed = final_cycle(run_dir, args)
        kept = all(final_files(runs_dir).get(name) == data for name, data in on_disk.items())
        clean = stopped_cleanly(stopped.returncode, stopped.stderr)
        zeros = [0] * len(raw)
        checks.append(
            _check_final(stopped.how, run_dir, [stopped, resumed], expected, zeros, kept=kept, stop_clean=clean)
        )
    for c in checks:
        log(
            f"  {c.what}: exit {[s.returncode for s in c.starts]}, retries {c.retries}, problems {c.problems or 'none'}"
        )
    return len(raw), checks
