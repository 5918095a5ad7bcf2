"""Where evaluations run: every backend gives the local backend's results, and a worker that dies costs a retry, not
the run. Runs are the smoke preset through click's runner; the Ray tests share one local cluster of 2 CPUs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from evo_sparse.cli import cli
from evo_sparse.execution import backends
from evo_sparse.execution.backends import Plan, plan
from evo_sparse.execution.local import in_order
from evo_sparse.execution.process import eval_limit
from evo_sparse.foundations import faults
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.presets import preset

SMOKE = ["run", "--preset", "smoke", "--quiet"]


def run(runs_dir: Path, *extra: str):
    result = CliRunner().invoke(cli, [*SMOKE, "--runs-dir", str(runs_dir), *extra])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1]), result


def rows(folder: Path) -> list[dict]:
    """Journal rows in (gen, index) order (workers journal evaluations as they finish)."""
    found = [json.loads(line) for line in (folder / "evaluations.jsonl").read_text().splitlines()]
    return sorted(found, key=lambda row: (row["gen"], row["index"]))


def computed(folder: Path, *, up_to_gen: int | None = None) -> dict:
    """What a run computed: journal rows and checkpoint, without wall-clock ``seconds`` and ``retries`` (how it
    went, not what it computed)."""

    def timeless(obj):
        if isinstance(obj, dict):
            return {k: timeless(v) for k, v in obj.items() if k not in ("seconds", "retries")}
        return [timeless(v) for v in obj] if isinstance(obj, list) else obj

    journal = [row for row in rows(folder) if up_to_gen is None or row["gen"] <= up_to_gen]
    checkpoint = json.loads((folder / "checkpoint.json").read_text()) if up_to_gen is None else None
    return timeless({"journal": journal, "checkpoint": checkpoint})


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    folder, _ = run(tmp_path_factory.mktemp("local"), "--backend", "local")
    assert {row["retries"] for row in rows(folder)} == {0}
    return folder


# --- which backend ----------------------------------------------------------------------------------------------------

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "backend, workers, cores, expected",
    [
        ("auto", 0, 2, Plan("process", ("cpu", "cpu"))),  # the default on this machine: one worker per core
        ("auto", 0, 1, Plan("local", ("cpu",))),
        ("auto", 1, 2, Plan("local", ("cpu",))),  # --workers 1 = this process
        ("auto", 3, 2, Plan("process", ("cpu",) * 3)),
        ("process", 0, 1, Plan("process", ("cpu",))),  # asked for: a worker process even on one core
        ("process", 1, 8, Plan("process", ("cpu",))),
        ("local", 0, 8, Plan("local", ("cpu",))),
    ],
)
def test_plan_on_the_cpu(monkeypatch, backend, workers, cores, expected):
    monkeypatch.setattr(backends, "cpu_cores", lambda: cores)
    cfg = preset("smoke").updated({"backend": backend, "workers": workers}).validate()
    assert plan(cfg, CPU) == expected


@pytest.mark.parametrize(
    "backend, device, workers, gpus, devices",
    [
        ("auto", "cuda", 0, 1, None),  # one GPU: this process
        ("auto", "cuda", 0, 4, ("cuda:0", "cuda:1", "cuda:2", "cuda:3")),  # several: one worker per GPU
        ("auto", "cuda:2", 0, 4, None),  # one chosen GPU: this process
        ("process", "cuda", 3, 2, ("cuda:0", "cuda:1", "cuda:0")),  # round-robin
        ("process", "cuda:1", 2, 2, ("cuda:1", "cuda:1")),
        ("local", "cuda", 0, 4, None),
    ],
)
def test_plan_on_gpus(monkeypatch, backend, device, workers, gpus, devices):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    cfg = preset("smoke").updated({"backend": backend, "workers": workers, "device": device})
    expected = Plan("process", devices) if devices else Plan("local", (device,))
    assert plan(cfg, torch.device(device)) == expected


def test_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    real = backends.importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name))
    with pytest.raises(ConfigError, match="pip install 'evo-sparse\\[ray\\]'"):
        plan(preset("smoke").updated({"backend": "ray"}), None)
    result = CliRunner().invoke(cli, [*SMOKE, "--backend", "ray", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.stderr.splitlines() == [f"evo-sparse: error: {backends.RAY_MISSING}"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json*"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--backend", "local", "--workers", "2"], "--workers 2 needs --backend process or ray"),
        (["--address", "10.0.0.1:6379"], "--address is for --backend ray"),
        (["--gpus-per-task", "0.5"], "--gpus-per-task is for --backend ray"),
        (["--backend", "ray", "--gpus-per-task", "0"], "--gpus-per-task must be in (0, 1]"),
        (["--max-retries", "-1"], "--max-retries must be 0 or more"),
        (["--backend", "gpu"], "--backend"),
    ],
)
def test_bad_backend_settings_stop_with_one_line(tmp_path, args, needle):
    result = CliRunner().invoke(cli, [*SMOKE, "--runs-dir", str(tmp_path), *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert not any(tmp_path.iterdir())


def test_an_address_where_no_cluster_listens_stops_at_once(tmp_path):
    pytest.importorskip("ray")
    result = CliRunner().invoke(
        cli, [*SMOKE, "--runs-dir", str(tmp_path), "--backend", "ray", "--address", "127.0.0.1:1"]
    )
    assert result.exit_code == 2 and result.stderr.startswith(
        "evo-sparse: error: --address 127.0.0.1:1: no Ray cluster answers there (Connection refused); start one with "
    )
    assert not any(tmp_path.iterdir())


def test_results_come_back_in_input_order():
    assert list(in_order([(2, {"i": 2}), (0, {"i": 0}), (1, {"i": 1})])) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_the_backend_settings_stay_out_of_the_run_folder_name():
    base = preset("smoke")
    for change in ({"backend": "ray", "address": "auto", "gpus_per_task": 0.5}, {"max_retries": 5, "workers": 3}):
        assert base.updated(change).run_hash() == base.run_hash()


# --- process: worker processes ----------------------------------------------------------------------------------------


def test_a_killed_worker_process_is_retried_and_the_run_gives_the_local_results(tmp_path, monkeypatch, local_run):
    """SIGKILL one of two worker processes mid-run (as the OOM killer would): its evaluation is retried in a new
    worker, the journal row records it, and everything computed equals the local backend's run."""
    pools, killed, real_start = [], [], backends.start

    def start(*args, **kwargs):
        pools.append(real_start(*args, **kwargs))
        return pools[-1]

    def kill_a_worker_after_the_first_row():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(p.stat().st_size for p in tmp_path.rglob("evaluations.jsonl")):
            time.sleep(0.01)
        if pools:  # both workers are busy now: 5 more evaluations of generation 0 are waiting
            killed.append(pools[0].pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    monkeypatch.setattr(backends, "start", start)
    killer = threading.Thread(target=kill_a_worker_after_the_first_row, daemon=True)
    killer.start()
    folder, result = run(tmp_path, "--backend", "process", "--workers", "2")
    killer.join()
    assert killed, "the run ended before a worker could be killed"
    assert f"worker process {killed[0]} (cpu) killed by SIGKILL during an evaluation; it is retried" in result.stderr
    assert [row["retries"] for row in rows(folder)].count(1) == 1 and pools[0].restarts == 1
    assert computed(folder) == computed(local_run)


def test_an_evaluation_whose_worker_always_dies_is_a_failed_record(tmp_path, monkeypatch, local_run):
    """``crash=P@9`` kills the worker at every attempt of the chosen mask; with --max-retries 1 it is tried twice,
    then recorded as failed, and the run goes on; the other evaluations are the local backend's."""
    expected = computed(local_run, up_to_gen=0)["journal"]
    draws = sorted(faults.crash_draw(0, row["mask"]) for row in expected)
    monkeypatch.setenv(faults.ENV, f"crash={(draws[0] + draws[1]) / 2}@9")  # the mask with the lowest draw
    args = ("--backend", "process", "--workers", "1", "--max-retries", "1", "--generations", "1")
    folder, result = run(tmp_path, *args)
    got = computed(folder)["journal"]
    lost = [i for i, row in enumerate(got) if row["status"] == "failed"]
    assert [faults.crash_draw(0, got[i]["mask"]) for i in lost] == draws[:1]
    for i in lost:
        row = rows(folder)[i]
        assert row["retries"] == 1 and row["fitness"] is None and row["mask"] == expected[i]["mask"]
        assert "killed by SIGKILL" in row["reason"] and "died at every attempt (--max-retries 1)" in row["reason"]
    assert result.stderr.count("it is retried in a new worker (1 of at most 1 retries)") == 1
    assert result.stderr.count("no retries left (--max-retries 1): recorded as failed") == 1
    kept = [i for i in range(len(got)) if i not in lost]
    assert [got[i] for i in kept] == [expected[i] for i in kept]


def test_a_hung_worker_is_killed_and_its_evaluation_retried(tmp_path, monkeypatch, local_run):
    """``hang=P`` makes a worker hang (for ever) on its first attempt at the chosen masks: past --eval-timeout it is
    killed, the evaluation is retried in a new worker, and everything computed equals the local backend's run."""
    expected = computed(local_run, up_to_gen=0)["journal"]
    draws = sorted(faults.crash_draw(0, row["mask"]) for row in expected)
    monkeypatch.setenv(faults.ENV, f"hang={(draws[0] + draws[1]) / 2}")  # the mask with the lowest draw, once
    # 10 s: at 3 s a new worker's first evaluation on a loaded machine (3.1-3.3 s) was once taken for a hang
    folder, result = run(tmp_path, "--backend", "process", "--workers", "2", "--eval-timeout", "10")
    assert "(--eval-timeout 10 s) and was killed as hung during an evaluation; it is retried" in result.stderr
    assert [row["retries"] for row in rows(folder)].count(1) == 1
    assert computed(folder) == computed(local_run)


@pytest.mark.parametrize(
    "setting, slowest, limit",
    [(5.0, None, 5.0), (5.0, 100.0, 5.0), (0.0, None, None), (0.0, 2.0, 60.0), (0.0, 30.0, 300.0)],
)
def test_the_automatic_eval_timeout_is_ten_times_the_slowest_with_a_floor(setting, slowest, limit):
    assert eval_limit(setting, slowest) == limit


# --- packs: individuals trained together -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed_local_run(tmp_path_factory) -> Path:
    folder, _ = run(tmp_path_factory.mktemp("packed"), "--backend", "local", "--pack", "4")
    return folder


def test_a_packed_run_gives_the_same_results_on_worker_processes(tmp_path, packed_local_run, local_run):
    """--pack 4 with 6 individuals: packs of 4 and 2 (padded to 4) here, in two workers there; the same values."""
    folder, _ = run(tmp_path, "--backend", "process", "--workers", "2", "--pack", "4")
    assert computed(folder) == computed(packed_local_run)
    assert folder.parent.name != local_run.parent.name  # the pack size is part of what a fitness value is


def test_a_packed_run_resumed_mid_generation_gives_the_same_results(tmp_path, packed_local_run):
    """A crash after 3 of generation 0's 6 evaluations: the resumed run packs the other 3 differently (one pack of
    3 + a copy, not the second half of a pack of 4 and a pack of 2), and still computes the very same values."""
    folder = tmp_path / packed_local_run.parent.name / packed_local_run.name
    shutil.copytree(packed_local_run, folder)
    journal = folder / "evaluations.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:3]))
    (folder / "checkpoint.json").unlink()
    resumed, _ = run(tmp_path, "--backend", "local", "--pack", "4")
    assert resumed == folder
    assert computed(resumed) == computed(packed_local_run)


# --- ray: tasks on a local Ray cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_results_and_retries_lost_workers(tmp_path, monkeypatch, local_run, ray_cluster):
    """Ray tasks on the 2-CPU cluster, two of whose evaluations kill their worker on the first attempt: each is
    retried and recorded, and everything computed equals the local backend's run."""
    draws = sorted(faults.crash_draw(0, row["mask"]) for row in rows(local_run))
    share = (draws[1] + draws[2]) / 2  # the two masks with the lowest draws
    monkeypatch.setenv(faults.ENV, f"crash={share}")
    folder, result = run(tmp_path, "--backend", "ray")
    crashed = [faults.crash_draw(0, row["mask"]) < share for row in rows(folder)]
    assert sum(crashed) == 2
    assert [row["retries"] for row in rows(folder)] == [int(c) for c in crashed]
    assert result.stderr.count("a Ray task was lost (WorkerCrashedError") == sum(crashed)
    assert computed(folder) == computed(local_run)
    environment = json.loads((folder / "environment.json").read_text())
    assert environment["backend"] == "ray" and environment["device"] == "ray"
    assert ray_cluster.is_initialized()  # the run used the cluster it found and left it running
