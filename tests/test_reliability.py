"""Never lose a run: kills at any moment resume to the uninterrupted result, failed evaluations are records, one
writer per run folder, nothing unsafe on load, and every bad input stops with one line. The machinery is in
tests/reliability.py and tests/bad_inputs.py, which scripts/reliability_report.py runs at full size to print the
README's figures."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import bad_inputs as B
import pytest
import reliability as R
import torch
from click.testing import CliRunner

from evo_sparse.cli import cli
from evo_sparse.foundations.devices import cpu_cores
from evo_sparse.foundations.errors import DataError
from evo_sparse.foundations.presets import preset
from evo_sparse.models.masks import Mask, sample
from evo_sparse.training import fitness
from evo_sparse.training.data import make_synthetic
from evo_sparse.training.fitness import Evaluator

FAULT_POINTS = ("kill-before-replace=config.json", "kill-mid-journal=2", "kill-before-replace=checkpoint.json")


# --- kills ------------------------------------------------------------------------------------------------------------


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    """SIGKILL inside the config, journal and checkpoint writes, after a journal row (while a second run of the same
    command is refused) and at a random moment; every start resumes and the end equals an uninterrupted run."""
    (check,) = R.kill_campaign(
        tmp_path,
        {"workers": 1},
        kills=2,
        seed=1,
        max_delay=6.0,
        fault_points=FAULT_POINTS,
        probe_lock=True,
        finish_here=True,
    )
    assert check.ok, (check.problems, [(c.how, c.returncode, c.stderr[-300:]) for c in check.cycles])
    config_kill, journal_kill, checkpoint_kill, probed = check.cycles[:4]
    assert all(c.killed for c in check.cycles[:4]) and check.kills == 5
    assert "config.json" not in config_kill.files and config_kill.leftovers[0].startswith(".config.json.")
    assert journal_kill.torn  # half a line was on disk when it died; the next start cut it off
    assert any(name.startswith(".checkpoint.json.") for name in checkpoint_kill.leftovers)
    assert probed.probe == f"exit 2: evo-sparse: error: run folder {check.folder} is in use by pid {probed.pid}; " + (
        "wait for that run to finish or stop it (a run that was killed releases the folder by itself)"
    )
    assert check.cycles[-1].finished and sum(check.rows_per_slot.values()) == 12


@pytest.mark.slow
def test_twenty_kills_at_random_moments(tmp_path):
    checks = R.kill_campaign(
        tmp_path,
        {"workers": 1, "generations": 6},
        kills=20,
        seed=2,
        max_delay=6.0,
        fault_points=(*FAULT_POINTS, "kill-mid-journal=5", "kill-before-replace=checkpoint.json@2"),
    )
    assert sum(c.kills for c in checks) >= 25
    assert all(c.ok for c in checks), [(c.seed, c.problems) for c in checks]


def test_worker_processes_die_with_a_killed_run(tmp_path):
    options = {"runs_dir": tmp_path / "runs"}  # default workers: one process per core
    killed = R.cycle(options, after_rows=1)
    assert killed.killed and killed.orphans == []
    if cpu_cores() > 1 and Path("/proc").is_dir():  # processes are found through Linux's /proc
        assert killed.children >= 2  # the worker processes (and multiprocessing's resource tracker) were there
    finished = R.finish_in_process(options)
    check = R.check_run(options, [killed, finished], tmp_path)
    assert check.ok, (check.problems, finished.stderr[-500:])


# Once lost in 4 of 5 fresh-clone CI runs: the suite ran with SIGINT ignored (a background job of a script), and the run
# it started inherited that; the cycle now starts its runs as a terminal's job (``R.as_a_terminal_job``).
def test_worker_processes_die_with_a_killed_run_and_ctrl_c_stops_cleanly(tmp_path):
    # Default workers: one process per core. 8 generations (27 evaluations) leave seconds of work after the second
    # row, so that the Ctrl-C lands mid-run even when a loaded machine slows this test's polling.
    options = {"runs_dir": tmp_path / "runs", "generations": 8}
    killed = R.cycle(options, after_rows=1)
    assert killed.killed and killed.orphans == []
    if cpu_cores() > 1 and Path("/proc").is_dir():  # processes are found through Linux's /proc
        assert killed.children >= 2  # the worker processes (and multiprocessing's resource tracker) were there
    stopped = R.cycle(options, after_rows=1, delay=0.5, interrupt=True)  # mid-run, not at a row's very moment
    assert stopped.returncode == R.EXIT_INTERRUPTED and stopped.orphans == [], stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        "evo-sparse: interrupted; finished evaluations are saved, run the same command to resume"
    )
    assert "Traceback" not in stopped.stderr and not stopped.leftovers
    finished = R.finish_in_process(options)
    check = R.check_run(options, [killed, stopped, finished], tmp_path)
    assert check.ok, (check.problems, finished.stderr[-500:])


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(tmp_path):
    """The cause of the once lost Ctrl-C, pinned: a run whose parent ignores SIGINT (``nohup``, a script's background
    job) ignores it too, as every Unix program does, and finishes."""
    script = (
        "import signal, subprocess, sys, time, os\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        f"p = subprocess.Popen({R.command()!r} + {R.arguments({'runs_dir': tmp_path / 'runs'})!r}, "
        "start_new_session=True, stderr=subprocess.PIPE)\n"
        "time.sleep(1.0)\n"
        "os.killpg(p.pid, signal.SIGINT)\n"
        "p.communicate(timeout=300)\n"
        "sys.exit(p.returncode)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=320, env=R.environment())
    assert done.returncode == 0  # the SIGINT was ignored: the run finished


def test_sigterm_stops_a_run_with_worker_processes_like_ctrl_c_and_it_resumes(tmp_path):
    """Slurm's time limit or preemption, Kubernetes and ``timeout`` send SIGTERM to every process of the job."""
    options = {"runs_dir": tmp_path / "runs", "generations": 8}
    stopped = R.cycle(options, after_rows=1, delay=0.5, terminate=True)
    assert stopped.returncode == R.EXIT_TERMINATED and stopped.orphans == [], stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        "evo-sparse: terminated (SIGTERM); finished evaluations are saved, run the same command to resume"
    )
    assert "Traceback" not in stopped.stderr and not stopped.leftovers and stopped.rows_after > stopped.rows_before
    finished = R.finish_in_process(options)
    check = R.check_run(options, [stopped, finished], tmp_path)
    assert check.ok, (check.problems, finished.stderr[-500:])


# --- failed evaluations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", (0.05, 0.2, 0.5))
def test_injected_failures_are_recorded_and_never_best(tmp_path, rate):
    check = R.injected_failures(tmp_path, rate)
    assert check.exit_code == 0
    assert check.injected > 0 and check.recorded == check.injected, check
    assert check.wrongly_failed == 0 and check.oom_retried == check.oom_injected, check
    assert check.failed_in_best == 0 and check.best_is_best_ok, check


def test_too_many_failures_stop_the_run_after_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("EVO_SPARSE_FAULT", "fail=1")
    options = {"workers": 1, "train_images": 32, "runs_dir": tmp_path}
    folder = R.folder_of(options)
    result = CliRunner().invoke(cli, R.arguments(options))
    message = (
        "evo-sparse: error: 6 of 6 evaluations failed (100%), more than --max-failed-share 0.5 (last reason: "
        f"RuntimeError: injected failure (EVO_SPARSE_FAULT)); every reason is in {folder / 'evaluations.jsonl'}. "
        "Fix the cause, or allow more with --max-failed-share, and run the same command to resume"
    )
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == message
    assert json.loads((folder / "checkpoint.json").read_text())["next_generation"] == 1
    before = R.state_files(tmp_path)
    again = CliRunner().invoke(cli, R.arguments(options))  # stays stopped, without evaluating anything
    assert again.exit_code == 2 and again.stderr.strip().splitlines()[-1] == message
    assert R.state_files(tmp_path) == before
    allowed = CliRunner().invoke(cli, R.arguments(options | {"max_failed_share": 1}))
    assert allowed.exit_code == 0, allowed.output
    summary = json.loads(CliRunner().invoke(cli, ["show", str(folder), "--json"]).stdout)
    assert summary["finished"] and summary["failed_evaluations"] == 12 and summary["best"] is None
    assert [e["failed"] for e in summary["logbook"]] == [6, 6, 6] and summary["logbook"][-1]["max"] is None
    last = CliRunner().invoke(cli, R.arguments(options | {"generations": 1}))  # nothing left to stop: a warning
    assert last.exit_code == 0 and "warning: 6 of 6 evaluations failed (100%), more than --max-failed-share 0.5; " in (
        last.stderr
    )


@pytest.fixture(scope="module")
def evaluator():
    cfg = preset("smoke")
    data = make_synthetic(seed=0, train_size=256, val_size=100, test_size=10)
    ev = Evaluator(cfg, data, "cpu")
    return ev, Mask(ev.layout, tuple(sample(ev.layout, 0.5)))


def _raising(exc, when=lambda stream: True):
    real = fitness.train

    def train(model, stream, cfg):
        if when(stream):
            raise exc
        return real(model, stream, cfg)

    return train


@pytest.mark.parametrize(
    "exc, reason",
    [
        (ValueError("boom\nsecond line"), "ValueError: boom second line"),
        (RuntimeError("DefaultCPUAllocator: not enough memory"), "RuntimeError: DefaultCPUAllocator"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "out of device memory at batch size 32 and 16"),
    ],
)
def test_an_evaluation_that_raises_is_a_failed_record(evaluator, monkeypatch, exc, reason):
    ev, mask = evaluator
    monkeypatch.setattr(fitness, "train", _raising(exc))
    record = ev.evaluate_mask(mask)
    assert record["status"] == "failed" and record["fitness"] is None and record["reason"].startswith(reason)
    assert record["sparsity"] == mask.sparsity and record["seconds"] >= 0


def test_out_of_memory_is_retried_once_at_half_the_batch(evaluator, monkeypatch):
    ev, mask = evaluator
    normal = ev.evaluate_mask(mask)
    monkeypatch.setattr(fitness, "train", _raising(torch.cuda.OutOfMemoryError("oom"), lambda s: s.x.shape[1] == 32))
    retried = ev.evaluate_mask(mask)
    assert normal["batch_size"] == 32 and retried["batch_size"] == 16 and retried["status"] == "ok"
    assert retried["train_images"] == normal["train_images"] == 512 and 0 <= retried["fitness"] <= 1
    stream = ev.replicates[0].stream
    halved, cfg = ev._rebatched(stream, 16, ev.cfg.train)
    assert torch.equal(halved.x.flatten(0, 1), stream.x.flatten(0, 1)) and halved.x.shape[1] == cfg.batch_size == 16


def test_non_finite_validation_is_a_failed_record(evaluator, monkeypatch):
    ev, mask = evaluator
    monkeypatch.setattr(fitness, "evaluate", lambda *a: (0.5, math.inf))
    record = ev.evaluate_mask(mask)
    assert record["status"] == "failed" and record["reason"] == "validation accuracy 0.5, loss inf"


@pytest.mark.parametrize("exc", (KeyboardInterrupt(), DataError("the data set is gone")))
def test_interrupts_and_user_errors_are_not_swallowed(evaluator, monkeypatch, exc):
    ev, mask = evaluator
    monkeypatch.setattr(fitness, "train", _raising(exc))
    with pytest.raises(type(exc)):
        ev.evaluate_mask(mask)


# --- bad inputs -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_finished(tmp_path_factory) -> Path:
    return B.half_finished_base(tmp_path_factory.mktemp("reliability"))


@pytest.mark.parametrize("case", B.BAD_INPUTS, ids=[c.name for c in B.BAD_INPUTS])
def test_bad_input_stops_with_one_line_and_touches_nothing(tmp_path, half_finished, case):
    rejection = B.reject(case, tmp_path, half_finished)
    assert rejection.clean, rejection


def test_a_run_folder_in_use_is_refused(tmp_path, half_finished):
    rejection = B.in_use_rejection(tmp_path, half_finished)
    assert rejection.clean, rejection


def test_the_half_finished_base_resumes(tmp_path, half_finished):
    """The state every bad-input case starts from is itself good: the same command finishes it."""
    args = B.copy_base(tmp_path, half_finished)
    result = CliRunner().invoke(cli, ["run", "--preset", "smoke", "--quiet", *args])
    assert result.exit_code == 0, result.output
    assert "resuming at generation 2 of 3" in result.stderr


def test_show_refuses_a_damaged_checkpoint_in_one_line(tmp_path, half_finished):
    B.copy_base(tmp_path, half_finished)
    (folder,) = (tmp_path / "runs").glob("*/seed_0")
    (folder / "checkpoint.json").write_text('{"schema": 2')
    result = CliRunner().invoke(cli, ["show", str(folder)])
    assert result.exit_code == 2 and result.stderr.startswith("evo-sparse: error: checkpoint ")
    assert len(result.stderr.strip().splitlines()) == 1


# --- nothing unsafe on load -------------------------------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "evo_sparse"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _calls(tree) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append((ast.unparse(node.func), node))
    return out


def _keyword(call: ast.Call, name: str):
    return next((ast.literal_eval(k.value) for k in call.keywords if k.arg == name), None)


def test_nothing_in_the_package_unpickles_a_file():
    """No pickle-family import; torch.load only with weights_only=True; numpy loads only with allow_pickle=False; the
    one pickle read is torchvision's own CIFAR-10 reader (its standard format), and only in data.py."""
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            problems += [f"{path.name}: imports {n}" for n in names if n in UNSAFE_MODULES]
        for name, call in _calls(tree):
            if name.endswith("torch.load") and _keyword(call, "weights_only") is not True:
                problems.append(f"{path.name}:{call.lineno}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is not False:
                problems.append(f"{path.name}:{call.lineno}: np.load without allow_pickle=False")
            if name.endswith("CIFAR10") and path.name != "data.py":
                problems.append(f"{path.name}:{call.lineno}: torchvision's pickled CIFAR-10 read outside data.py")
    assert problems == []


def test_the_fault_hooks_are_off_unless_asked(monkeypatch):
    from evo_sparse.foundations import faults

    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.spec() == {} and faults.fitness_fault(0, "m1:abc:def") is None
    assert not faults.tear_journal_line()
    faults.before_replace("checkpoint.json")  # returns: nothing is killed
    monkeypatch.setenv(faults.ENV, "fail=1, kill-mid-journal=3")
    assert faults.spec() == {"fail": "1", "kill-mid-journal": "3"}
    assert os.environ[faults.ENV] and faults.fitness_fault(0, "m1:abc:def") == "fail"


def test_sigterm_stops_a_run_on_ray_and_it_resumes(tmp_path):
    """The same on the Ray backend: a run that starts its own local Ray cluster is stopped by SIGTERM to its process
    group (Ray's processes included, as a scheduler signals the whole job), says so in one line with exit 143, leaves
    no process behind, and the same command resumes to the uninterrupted result."""
    pytest.importorskip("ray")
    options = {"runs_dir": tmp_path / "runs", "generations": 8, "backend": "ray", "workers": 2}
    stopped = R.cycle(options, after_rows=1, delay=0.5, terminate=True)
    assert stopped.returncode == R.EXIT_TERMINATED and stopped.orphans == [], stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        "evo-sparse: terminated (SIGTERM); finished evaluations are saved, run the same command to resume"
    )
    assert "Traceback" not in stopped.stderr and not stopped.leftovers and stopped.rows_after > stopped.rows_before
    finished = R.cycle(options)  # the same command, to the end
    assert finished.returncode == 0 and finished.orphans == [], finished.stderr[-2000:]
    check = R.check_run(options, [stopped, finished], tmp_path)
    assert check.ok, (check.problems, finished.stderr[-500:])
