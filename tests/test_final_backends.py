"""Final training runs on the search's backends: worker processes give the local records, a worker killed during a
training costs a retry (the record is the uninterrupted one), a training whose worker always dies is a failed record
and the others go on, a hung worker is killed and its training retried; no ``multiprocessing.Pool`` is left."""

from __future__ import annotations

import ast
import json
import pickle
import random
import re
from pathlib import Path

import pytest

import evo_sparse
from evo_sparse.execution import process
from evo_sparse.foundations import faults
from evo_sparse.foundations.presets import final_preset, preset
from evo_sparse.models.masks import Mask, sample
from evo_sparse.runs.run import layout_of
from evo_sparse.study import final

TIMING = ("seconds", "epoch_seconds")  # how long it took, not what it computed


def jobs_in(folder: Path, settings: dict) -> list[final.Job]:
    """Three smoke trainings of one epoch (two random masks, the first under two training seeds) written under
    ``folder``, their config carrying ``settings`` (backend, workers, retries)."""
    cfg = preset("smoke").updated({"data.val_size": 100, **settings}).validate()
    recipe = final_preset("smoke").updated({"epochs": 1})
    layout = layout_of(cfg)
    rng = random.Random(0)
    masks = [Mask(layout, tuple(sample(layout, 0.5, rng=rng))).encode() for _ in range(2)]
    return [
        final.Job(cfg, recipe, "random", i, t, masks[i], 0.5, None, folder / f"random_{i}_seed{t}.json", "here")
        for i, t in ((0, 0), (0, 1), (1, 0))
    ]


def computed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in (*TIMING, "retries")} for r in records]


@pytest.fixture(scope="module")
def local_records(tmp_path_factory) -> list[dict]:
    records = final.execute(jobs_in(tmp_path_factory.mktemp("local"), {"backend": "local"}))
    assert all(r["status"] == "ok" and "retries" not in r for r in records)
    return records


def test_a_job_pickles_as_it_travels_to_a_worker(tmp_path):
    job = jobs_in(tmp_path, {})[0]
    assert pickle.loads(pickle.dumps(job)) == job


def test_worker_processes_give_the_local_records(tmp_path, local_records):
    lines: list[str] = []
    jobs = jobs_in(tmp_path, {"backend": "process", "workers": 2})
    records = final.execute(jobs, log=lines.append)
    assert computed(records) == computed(local_records) and not lines
    assert [json.loads(j.path.read_text()) for j in jobs] == records  # each written as it finished


def test_a_worker_killed_during_a_training_is_retried_and_the_record_is_the_uninterrupted_one(
    tmp_path, monkeypatch, local_records
):
    """``crash=P`` makes the worker of one mask's trainings SIGKILL itself at their first attempt (what the OOM killer
    does): each is retried in a new worker, records it, and gives the local record."""
    jobs = jobs_in(tmp_path, {"backend": "process", "workers": 2})
    draws = sorted({faults.crash_draw(0, job.mask) for job in jobs})
    monkeypatch.setenv(faults.ENV, f"crash={sum(draws) / 2}")  # the mask with the lower draw
    crashed = [int(faults.crash_draw(0, job.mask) < draws[1]) for job in jobs]
    lines: list[str] = []
    records = final.execute(jobs, log=lines.append)
    assert computed(records) == computed(local_records)
    assert [r.get("retries", 0) for r in records] == crashed and 0 < sum(crashed) < len(jobs)
    retried = [line for line in lines if "killed by SIGKILL during a final training; it is retried" in line]
    assert len(retried) == sum(crashed), lines


def test_a_training_whose_worker_always_dies_is_a_failed_record_and_the_others_go_on(
    tmp_path, monkeypatch, local_records
):
    """``crash=P@9`` kills the worker at every attempt of the first mask's trainings; with --max-retries 1 each is
    tried twice, then written as a failed record; the other mask trains as it does locally. A rerun trains nothing."""
    jobs = jobs_in(tmp_path, {"backend": "process", "workers": 1, "max_retries": 1})
    draws = [faults.crash_draw(0, job.mask) for job in jobs[::2]]  # the two masks
    doomed = [faults.crash_draw(0, job.mask) < max(draws) for job in jobs]
    assert 0 < sum(doomed) < len(jobs)
    monkeypatch.setenv(faults.ENV, f"crash={max(draws)}@9")  # the mask with the lower draw
    lines: list[str] = []
    records = final.execute(jobs, log=lines.append)
    for record, expected, dies in zip(records, local_records, doomed, strict=True):
        if not dies:
            assert computed([record]) == computed([expected]) and "retries" not in record
            continue
        assert record["status"] == "failed" and record["final_test_acc"] is None and record["retries"] == 1
        assert re.search(r"worker process \d+ \(cpu\) killed by SIGKILL during a final training", record["reason"])
        assert "2 time(s): its worker died at every attempt (--max-retries 1)" in record["reason"]
        assert set(record) - {"retries"} == set(expected)  # the fields of any other record
        same = ("kind", "index", "seed", "train_seed", "sparsity", "node_sparsity", "params", "flops", "mask", "recipe")
        assert {k: record[k] for k in same} == {k: expected[k] for k in same}
    assert sum("no retries left (--max-retries 1): recorded as failed" in line for line in lines) == sum(doomed)
    assert final.pending(jobs) == [] and final.execute(jobs) == records  # written; the rerun keeps them


def test_a_hung_training_is_killed_and_retried(tmp_path, monkeypatch, local_records):
    """``hang=P`` hangs the worker at the first attempt of one mask's trainings: once another training has finished,
    the automatic limit (ten times the slowest per unit of work, as in use, but at least 1 s) kills it, and the retry
    gives the local record. (A factor of 2 once took a retried training on a loaded machine for a hung one.)"""
    monkeypatch.setattr(process, "EVAL_TIMEOUT_FACTOR", 10)
    monkeypatch.setattr(process, "EVAL_TIMEOUT_FLOOR", 1.0)
    # three workers: every training starts at once, so one that does not hang finishes and sets the limit
    jobs = jobs_in(tmp_path, {"backend": "process", "workers": 3, "eval_timeout": 1000.0})  # ignored: for the search
    draws = sorted({faults.crash_draw(0, job.mask) for job in jobs})
    monkeypatch.setenv(faults.ENV, f"hang={sum(draws) / 2}")  # the mask with the lower draw, once
    lines: list[str] = []
    records = final.execute(jobs, log=lines.append)
    assert computed(records) == computed(local_records)
    hung = [line for line in lines if "was killed as hung during a final training; it is retried" in line]
    assert hung and len(hung) == sum(r.get("retries", 0) for r in records), lines


@pytest.mark.parametrize(
    "setting, slowest, cost, limit",
    [(5.0, 1.0, 100.0, 5.0), (0.0, None, 3.0, None), (0.0, 2.0, 10.0, 200.0), (0.0, 2.0, 0.5, 60.0)],
)
def test_the_automatic_limit_scales_with_a_tasks_work(setting, slowest, cost, limit):
    assert process.eval_limit(setting, slowest, cost) == limit


def test_no_multiprocessing_pool_is_left_in_the_package():
    """``multiprocessing.Pool`` waits for ever for a worker the OS killed: every pool of workers is a backend's map.
    (The code is checked, not the prose: a docstring may say why.)"""
    pools = []
    for path in Path(evo_sparse.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            if (isinstance(node, ast.Attribute) and node.attr == "Pool") or "Pool" in names:
                pools.append(f"{path.name}:{node.lineno}")
    assert pools == []
