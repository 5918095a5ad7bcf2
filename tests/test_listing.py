"""``evo-sparse list``: one line per folder under a runs folder (finished, unfinished, running, damaged, a comparison),
read without writing, and a damaged folder never stops the listing."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from evo_sparse.cli import cli
from evo_sparse.foundations.paths import RunPaths
from evo_sparse.foundations.storage import folder_lock
from evo_sparse.runs.listing import ENTRY_KEYS, age, format_listing, list_folders
from evo_sparse.runs.run import read_config, write_config

SMALL = ["--preset", "smoke", "--generations", "2", "--pop", "4", "--workers", "1", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder: a finished run at sparsity 0.6, a comparison (and its two runs), an unfinished run (the finished
    one's files as a run of 3 generations stopped after 2 leaves them), a run with a corrupted checkpoint, one with a
    corrupted config, a folder that is not ours."""
    runs = tmp_path_factory.mktemp("runs")
    result = invoke("run", *SMALL, "--sparsity", "0.6", "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    done = Path(result.stdout.strip().splitlines()[-1])
    result = invoke("compare", *SMALL, "--generations", "1", "--pop", "2", "--runs", "1", "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output

    unfinished = runs / "weedout_aaaaaaaaaa" / "seed_0"
    shutil.copytree(done, unfinished)
    cfg = read_config(done / "config.json").updated({"search.generations": 3})
    write_config(RunPaths(unfinished), cfg)
    ckpt = json.loads((unfinished / "checkpoint.json").read_text())
    (unfinished / "checkpoint.json").write_text(json.dumps(ckpt | {"settings": cfg.hashed_items()}))

    for name, damage in (("bbbbbbbbbb", "checkpoint.json"), ("cccccccccc", "config.json")):
        shutil.copytree(done, runs / f"weedout_{name}" / "seed_0")
        (runs / f"weedout_{name}" / "seed_0" / damage).write_text('{"schema": 2, "torn')
    (runs / "notes").mkdir()
    return runs


def by_folder(entries: list[dict]) -> dict[str, dict]:
    return {e["folder"]: e for e in entries}


def test_every_folder_is_an_entry_and_listing_writes_nothing(runs):
    before = files(runs)
    entries = list_folders(runs)
    assert files(runs) == before
    assert all(tuple(e) == ENTRY_KEYS for e in entries)
    kinds = sorted((e["kind"], e["folder"].split("_")[0]) for e in entries)
    assert kinds == [("compare", "compare")] + [("run", "ga")] + [("run", "weedout")] * 5  # not notes/


def test_finished_and_unfinished_runs(runs):
    entries = by_folder(list_folders(runs))
    done = next(e for f, e in entries.items() if e["settings"].get("sparsity") == 0.6 and "aaaa" not in f)
    summary = json.loads(invoke("show", str(runs / done["folder"]), "--json").stdout)
    assert done["status"] == "finished" and done["progress"] == "2/2 generations"
    assert (done["generations_done"], done["generations"]) == (2, 2)
    assert done["best"] == summary["best"]["fitness"] and done["failed"] == 0
    assert done["preset"] == "smoke" and done["settings"] == {"generations": 2, "population": 4, "sparsity": 0.6}
    assert time.time() - time.mktime(time.strptime(done["modified"][:19], "%Y-%m-%dT%H:%M:%S")) < 3600

    stopped = entries["weedout_aaaaaaaaaa/seed_0"]
    assert stopped["status"] == "unfinished" and stopped["progress"] == "2/3 generations"
    assert stopped["settings"] == {"population": 4, "sparsity": 0.6}  # 3 generations: the smoke preset's own


def test_damaged_folders_are_listed_with_the_reason(runs):
    entries = by_folder(list_folders(runs))
    torn = entries["weedout_bbbbbbbbbb/seed_0"]
    assert torn["status"] == "damaged" and torn["reason"].startswith("checkpoint checkpoint.json is damaged")
    assert str(runs) not in torn["reason"]  # the folder is on the line already
    bad_config = entries["weedout_cccccccccc/seed_0"]
    assert bad_config["status"] == "damaged" and "config.json is damaged" in bad_config["reason"]


def test_a_comparison_and_its_runs(runs):
    entries = list_folders(runs)
    (comparison,) = [e for e in entries if e["kind"] == "compare"]
    saved = json.loads((runs / comparison["folder"] / "comparison.json").read_text())
    assert comparison["status"] == "finished" and comparison["progress"] == "2 runs of 2 trainings"
    assert comparison["best"] == max(r["best"] for r in saved["runs"])
    assert comparison["settings"] == {"algorithms": "weedout,ga", "generations": 1, "population": 2}
    ga = [e for e in entries if e["folder"].startswith("ga_")]
    assert len(ga) == 1 and ga[0]["settings"]["algorithm"] == "ga" and ga[0]["status"] == "finished"


def test_a_run_being_written_is_running(runs):
    with folder_lock(runs / "weedout_aaaaaaaaaa" / "seed_0" / "lock"):
        assert by_folder(list_folders(runs))["weedout_aaaaaaaaaa/seed_0"]["status"] == "running"
    assert by_folder(list_folders(runs))["weedout_aaaaaaaaaa/seed_0"]["status"] == "unfinished"


def test_the_command_prints_a_line_per_folder_or_json(runs, monkeypatch):
    result = invoke("list", str(runs))
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["KIND", "FOLDER", "STATUS"] and len(lines) == 7
    assert result.stdout.strip() == format_listing(list_folders(runs))
    line = next(x for x in lines if "bbbbbbbbbb" in x)
    assert " damaged " in line and line.endswith("restore it or delete the run folder")
    assert any("2/3 generations" in x and "smoke: population=4, sparsity=0.6" in x for x in lines)
    assert json.loads(invoke("list", str(runs), "--json").stdout) == list_folders(runs)
    monkeypatch.chdir(runs.parent)
    (runs.parent / "runs").mkdir(exist_ok=True)
    result = invoke("list")  # default: ./runs, here empty
    assert result.exit_code == 0 and result.stdout == "" and "no run, study" in result.stderr


def test_a_missing_runs_folder_is_one_line(tmp_path):
    result = invoke("list", str(tmp_path / "nope"))
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"evo-sparse: error: {tmp_path / 'nope'} is not a folder; give the --runs-dir the runs were written to"
    )


def test_age_reads_like_a_person():
    now = time.time()
    stamp = lambda s: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now - s))  # noqa: E731
    assert [age(stamp(s), now) for s in (5, 125, 7300, 3 * 86400)] == ["just now", "2 min ago", "2 h ago", "3 days ago"]
    assert age(stamp(30 * 86400), now) == stamp(30 * 86400)[:10] and age(None) == "-"
