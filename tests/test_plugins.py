"""Search algorithms as plug-ins (issue 14): resolving a name, options, identity in the run folder, the ask/tell loop,
resume after a kill for both kinds, and a broken plug-in stopping with one line. Runs are tiny smoke runs in this
process; the plug-ins under test are in tests/plugins/ and examples/."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from evo_sparse.cli import cli
from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.errors import AlgorithmError, ConfigError
from evo_sparse.foundations.paths import run_folder
from evo_sparse.foundations.presets import preset
from evo_sparse.runs.journal import Journal
from evo_sparse.runs.run import execute
from evo_sparse.search import asktell, plugins

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
SH = "examples.successive_halving:SuccessiveHalving"
LOCAL = "examples.local_search:search"
BATCHES = "toy_plugins:Batches"
# The smallest runs that still search: 64 training images (two batches), 100 validation images, P=4, K=2, G=3, so
# an equal budget of P + (G-1)(P-K) = 8 trainings.
TINY = {
    "backend": "local",
    "data.val_size": 100,
    "train.train_images": 64,
    "search.population": 4,
    "search.generations": 3,
}
TINY_ARGS = ["--preset", "smoke", "--quiet", "--backend", "local", "--val-size", "100", "--train-images", "64"]
TINY_ARGS += ["--pop", "4"]
BUDGET = 8


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """The test plug-ins importable by module name, and the repo root the working folder (as when a user runs
    ``evo-sparse`` there), so that ``examples.*`` resolve."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.chdir(ROOT)


def tiny(runs_dir: Path, algorithm: str = "weedout", **flat) -> RunConfig:
    return preset("smoke").updated({**TINY, "runs_dir": str(runs_dir), "search.algorithm": algorithm, **flat})


def run(cfg: RunConfig) -> Path:
    return execute(cfg, log=lambda _: None, show_progress=False)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def journal(folder: Path) -> list[dict]:
    path = folder / "evaluations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def folder_of(cfg: RunConfig) -> Path:
    return run_folder(plugins.identify(cfg)[0])


def timeless(obj):
    if isinstance(obj, dict):
        return {k: timeless(v) for k, v in obj.items() if k != "seconds"}
    return [timeless(v) for v in obj] if isinstance(obj, list) else obj


def results(folder: Path) -> dict:
    """What a run computed: its journal keyed by (gen, index) and its checkpoint, without wall-clock seconds; every
    (gen, index) must occur once."""
    rows = journal(folder)
    keyed = {(r["gen"], r["index"]): r for r in rows}
    assert len(keyed) == len(rows), "a journal row is duplicated"
    ckpt = json.loads((folder / "checkpoint.json").read_text())
    return timeless({"journal": keyed, "checkpoint": ckpt})


def one_line_error(result, *needles: str) -> str:
    """The CLI's one-line error (exit 2), checked to hold every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()  # a run that started logged its data line before
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:] and lines[-1].startswith("evo-sparse: error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


@contextlib.contextmanager
def interrupted_after(rows: int):
    """Ctrl-C right after this start of the run has written ``rows`` journal rows: mid-generation, before the
    checkpoint that would cover them."""
    append, count = Journal.append, {"n": 0}

    def stopping(self, index, record):
        row = append(self, index, record)
        count["n"] += 1
        if count["n"] == rows:
            raise KeyboardInterrupt
        return row

    with mock.patch.object(Journal, "append", stopping), pytest.raises(KeyboardInterrupt):
        yield


# --- algorithms by name ---------------------------------------------------------------------------------------------


def test_builtins_resolve_without_a_plugin():
    """weedout and ga are built-ins: no target, no options, no source fingerprint."""
    for name in ("weedout", "ga"):
        algorithm = plugins.resolve(name)
        assert algorithm.builtin and algorithm.kind == plugins.BUILTIN
        assert (algorithm.target, algorithm.defaults, algorithm.source) == (None, {}, "")


def test_module_names_resolve_a_toolbox_function_and_an_ask_tell_class():
    """``module:name`` gives the object it names, as a toolbox plug-in (a function) or an ask/tell one (a class), with
    its option defaults, its own version and the fingerprint of its source file; a dotted attribute path works too."""
    import toy_plugins

    from examples import local_search, successive_halving

    local = plugins.resolve(LOCAL)
    assert local.kind == plugins.TOOLBOX and local.target is local_search.search and local.defaults == {"swaps": 1}
    sh = plugins.resolve(SH)
    assert sh.kind == plugins.ASK_TELL and sh.target is successive_halving.SuccessiveHalving
    assert sh.defaults == {"eta": 3, "rungs": 3}
    assert re.fullmatch(r"version 1; source [0-9a-f]{12}", sh.source), sh.source
    assert re.fullmatch(r"source [0-9a-f]{12}", local.source), local.source
    dotted = plugins.resolve("toy_plugins:Namespace.Batches")
    assert dotted.target is toy_plugins.Batches and dotted.kind == plugins.ASK_TELL
    assert plugins.resolve("toy_plugins:repeats").kind == plugins.TOOLBOX
    # the fingerprint is the source file's: the same for two objects of one file, another for another file
    assert dotted.source == plugins.resolve(BATCHES).source != sh.source


@pytest.mark.parametrize(
    ("name", "hint"), (("weedot", "did you mean weedout?"), ("gaa", "did you mean ga?"), ("annealing", ""))
)
def test_an_unknown_name_is_refused_with_the_closest_suggested(name, hint):
    """A name that is neither a built-in, an installed plug-in nor ``module:name`` is a ConfigError listing the
    choices, with the closest one suggested when there is one."""
    with pytest.raises(ConfigError) as info:
        plugins.resolve(name)
    message = str(info.value)
    assert f"--algorithm {name!r} is not a known algorithm" in message and "weedout, ga" in message
    assert hint in message and ("did you mean" in message) == bool(hint)


@pytest.mark.parametrize(
    ("name", "own_message"),
    (
        ("toy_broken_import:search", "RuntimeError: this plug-in needs the frobnicator package"),
        ("no_such_module_xyz:search", "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ("toy_plugins:Missing", "AttributeError: module 'toy_plugins' has no attribute 'Missing'"),
    ),
)
def test_a_plugin_that_cannot_be_imported_is_one_line_with_the_imports_own_message(tmp_path, name, own_message):
    """An import that fails (the module raises, is missing, lacks the name) is a one-line ConfigError naming the
    plug-in and quoting the import's own message; through the CLI: exit 2, one line, nothing written."""
    with pytest.raises(ConfigError) as info:
        plugins.resolve(name)
    message = str(info.value)
    assert "\n" not in message and name in message and own_message in message, message
    one_line_error(invoke("run", *TINY_ARGS, "--runs-dir", str(tmp_path), "--algorithm", name), name, own_message)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "needle"),
    (
        ("toy_plugins:NOT_A_PLUGIN", "is a int: give a setup(toolbox) function or a class with ask()"),
        ("toy_plugins:NoAskTell", "is a type: give a setup(toolbox) function or a class with ask()"),
        ("toy_plugins:bad_options", "its options must be a dict of name: default, not ['swaps']"),
    ),
)
def test_an_object_of_neither_kind_is_refused(name, needle):
    """What ``module:name`` points to must be a function or a class with ask() and tell(), and its options a dict."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        plugins.resolve(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    (
        ("", {"size": 3, "revisit": True, "scale": 1.0, "label": "toy"}),
        ("size=4, revisit=no, scale=2, label=x y", {"size": 4, "revisit": False, "scale": 2.0, "label": "x y"}),
        ("revisit=0,size=04", {"size": 4, "revisit": False, "scale": 1.0, "label": "toy"}),
        ("revisit=TRUE,scale=1e-3", {"size": 3, "revisit": True, "scale": 0.001, "label": "toy"}),
    ),
)
def test_options_take_the_type_of_their_default(text, expected):
    """``key=value`` pairs over the plug-in's defaults, each converted to its default's type (int, bool, float, str)."""
    options = plugins.resolve(BATCHES).options(text)
    assert options == expected
    assert [type(options[k]) for k in expected] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    ("text", "needle"),
    (
        ("sise=2", "--algo-opt sise: toy_plugins:Batches has no such option; did you mean size? its options: size"),
        ("colour=red", "has no such option; its options: size, revisit, scale, label"),
        ("size=many", "--algo-opt size=many: toy_plugins:Batches wants a int there (default 3)"),
        ("revisit=maybe", "wants a bool there (default True)"),
        ("scale=big", "wants a float there (default 1.0)"),
        ("size", "--algo-opt 'size' is not key=value"),
        ("size=0", "--algo-opt for toy_plugins:Batches: size must be at least 1, not 0"),
    ),
)
def test_a_bad_option_is_a_one_line_config_error(tmp_path, text, needle):
    """An unknown key (with a suggestion), a value of the wrong type, a pair without '=' and a value the plug-in's
    check_options refuses are each a one-line ConfigError, at the CLI before anything is written."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        plugins.identify(tiny(tmp_path, BATCHES, **{"search.algo_opts": text}))
    cli_args = ["run", *TINY_ARGS, "--runs-dir", str(tmp_path), "--algorithm", BATCHES, "--algo-opt", text]
    one_line_error(invoke(*cli_args), needle)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ("weedout", "ga"))
def test_algo_opt_for_a_builtin_is_refused(tmp_path, name):
    """Built-ins take their settings as options of their own: ``--algo-opt`` with one is a ConfigError."""
    with pytest.raises(ConfigError, match="--algo-opt is for plug-in algorithms"):
        plugins.identify(tiny(tmp_path, name, **{"search.algo_opts": "swaps=2"}))
    cli_args = ["run", *TINY_ARGS, "--runs-dir", str(tmp_path), "--algorithm", name, "--algo-opt", "swaps=2"]
    one_line_error(invoke(*cli_args), "--algo-opt is for plug-in algorithms")


def test_canonical_options_name_the_run_folder(tmp_path):
    """The folder's hash sees the options that differ from the defaults, in one canonical form: defaults spelled out
    change nothing, order and spelling of a value change nothing, another value gives another folder."""

    def folder(text: str) -> Path:
        return folder_of(tiny(tmp_path, BATCHES, **{"search.algo_opts": text}))

    assert folder("") == folder("size=3") == folder("label=toy,revisit=yes")
    assert folder("size=4,scale=2") == folder(" scale=2.0 , size=04")
    assert len({folder(""), folder("size=4"), folder("size=5"), folder("size=4,scale=2")}) == 4
    cfg = plugins.identify(tiny(tmp_path, BATCHES, **{"search.algo_opts": "size=04,scale=2,label=toy"}))[0]
    assert cfg.search.algo_opts == "scale=2.0,size=4"
    assert cfg.search.algorithm_source == plugins.resolve(BATCHES).source


class FakeEntryPoint:
    """What ``importlib.metadata`` gives for an entry point: a name, ``module:attr``, its distribution, ``load()``."""

    def __init__(self, name: str, value: str, dist: tuple[str, str] | None = None):
        self.name, self.value, self.group = name, value, plugins.GROUP
        self.dist = type("Dist", (), {"name": dist[0], "version": dist[1]})() if dist else None

    def load(self):
        import importlib

        module, _, attr = self.value.partition(":")
        return getattr(importlib.import_module(module), attr)


@pytest.fixture
def installed(monkeypatch):
    """Two plug-ins that installed packages declare: one that loads, one whose import fails."""
    points = {
        "toy": FakeEntryPoint("toy", BATCHES, ("toy-dist", "1.2")),
        "shaky": FakeEntryPoint("shaky", "toy_broken_import:search"),
    }
    monkeypatch.setattr(plugins, "entry_points", lambda: points)
    return points


def test_entry_point_plugins_resolve_by_name(installed, tmp_path):
    """An installed plug-in resolves by its entry-point name, its distribution and version part of its identity; a
    close misspelling suggests it; its run folder is named after it."""
    import toy_plugins

    toy = plugins.resolve("toy")
    assert toy.kind == plugins.ASK_TELL and toy.target is toy_plugins.Batches
    assert toy.source.startswith("toy-dist 1.2; version 1; source ")
    with pytest.raises(ConfigError, match="did you mean toy\\?"):
        plugins.resolve("toyy")
    with pytest.raises(ConfigError, match="--algorithm shaky: cannot import it .*frobnicator"):
        plugins.resolve("shaky")
    assert folder_of(tiny(tmp_path, "toy")).parent.name.startswith("toy_")


def test_entry_point_plugins_are_listed(installed):
    """``available()`` and ``evo-sparse algorithms`` list the built-ins, then every installed plug-in with its kind,
    options and description, and a broken one with the reason."""
    rows = plugins.available()
    assert [r["name"] for r in rows] == ["weedout", "ga", "shaky", "toy"]
    toy = rows[3]
    assert toy["kind"] == "ask/tell" and toy["from"] == BATCHES
    assert toy["options"] == "size=3,revisit=True,scale=1.0,label='toy'"
    assert toy["description"].startswith("Ask/tell: ``size`` fresh random masks per ask")
    assert rows[2]["kind"] == "broken" and "frobnicator" in rows[2]["description"]
    text = invoke("algorithms")
    assert text.exit_code == 0, text.output
    lines = {line.split()[0]: line for line in text.stdout.splitlines()}
    assert {"weedout", "ga", "shaky", "toy"} <= set(lines)
    assert "ask/tell" in lines["toy"] and "[options: size=3," in lines["toy"] and f"({BATCHES})" in lines["toy"]
    assert "broken" in lines["shaky"] and "builtin" in lines["weedout"]
    as_json = invoke("algorithms", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == rows


# --- identity: a run folder is a function of the algorithm too ------------------------------------------------------


def test_different_plugins_never_share_a_run_folder(tmp_path):
    """Every algorithm, every plug-in and every option value has its own folder, even where two names give the same
    folder-name slug (``toy_plugins:Namespace.Batches`` and ``toy_plugins_Namespace:Batches``, one object)."""
    names = ["weedout", "ga", LOCAL, SH, BATCHES, "toy_plugins:Namespace.Batches", "toy_plugins_Namespace:Batches"]
    names += ["toy_plugins:repeats", "toy_plugins:broken_setup", "toy_plugins:Broken"]
    configs = [tiny(tmp_path, n) for n in names]
    configs += [
        tiny(tmp_path, BATCHES, **{"search.algo_opts": "size=2"}),
        tiny(tmp_path, SH, **{"search.algo_opts": "eta=2"}),
    ]
    folders = [folder_of(c) for c in configs]
    assert len(set(folders)) == len(folders)
    same_slug = [folder_of(tiny(tmp_path, n)).parent.name for n in names[5:7]]
    assert same_slug[0].split("_")[:-1] == same_slug[1].split("_")[:-1] and same_slug[0] != same_slug[1]


EDITED = '''"""A plug-in the test edits."""


class Edited:
    def __init__(self, toolbox):
        self.toolbox = toolbox

    def ask(self):
        return [self.toolbox.sample() for _ in range(2)]

    def tell(self, proposals, fitnesses):
        pass
'''


def test_an_edited_plugin_gets_another_folder_and_never_resumes_the_old_one(tmp_path, monkeypatch):
    """A run of a plug-in stopped mid-way, the plug-in's source then edited: the same command starts another folder
    and leaves the old one as it was; the old run's config is refused ("changed"), by the library and by the CLI's
    --config; with the old source back, the old run resumes and finishes."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc of the other version
    modules = tmp_path / "modules"
    modules.mkdir()
    monkeypatch.syspath_prepend(str(modules))
    source = modules / "edited_plugin.py"
    source.write_text(EDITED)
    cfg = tiny(tmp_path / "runs", "edited_plugin:Edited")
    with interrupted_after(3):
        run(cfg)
    old = folder_of(cfg)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    assert len(journal(old)) == 3

    source.write_text(EDITED.replace("range(2)", "range(1 + 2)"))
    monkeypatch.delitem(sys.modules, "edited_plugin")  # a new process: the edited module is imported afresh
    new = run(cfg)
    assert new != old and new.parent.parent == old.parent.parent
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert all(r["gen"] == 0 for r in journal(new)[:3]) and journal(new)[2]["index"] == 2  # three per ask now

    old_cfg = RunConfig.from_dict(json.loads((old / "config.json").read_text()))
    with pytest.raises(ConfigError, match=r"--algorithm edited_plugin:Edited changed since this config was written"):
        run(old_cfg)
    one_line_error(invoke("run", "--config", str(old / "config.json"), "--quiet"), "edited_plugin:Edited", "changed")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before

    source.write_text(EDITED)
    monkeypatch.delitem(sys.modules, "edited_plugin")
    assert run(old_cfg) == old
    assert json.loads((old / "checkpoint.json").read_text())["finished"]
    first = [json.loads(line) for line in before["evaluations.jsonl"].decode().splitlines()]
    assert journal(old)[:3] == first and len(journal(old)) == BUDGET


def test_a_plugin_without_a_source_file_keeps_its_identity_across_processes(tmp_path):
    """A plug-in shipped without its .py (only the compiled .pyc) must get the same identity in every process, or a
    stopped run of it could never be resumed: each start would name another folder."""
    (tmp_path / "sourceless_plugin.py").write_text("def search(toolbox):\n    pass\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-b", "sourceless_plugin.py"], cwd=tmp_path, check=True)
    (tmp_path / "sourceless_plugin.py").unlink()
    code = "from evo_sparse.search import plugins; print(plugins.resolve('sourceless_plugin:search').source)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    sources = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert sources[0].startswith("source ") and sources[0] == sources[1], sources


# --- the ask/tell loop ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", (SH, BATCHES))
def test_an_ask_tell_run_journals_fidelity_and_cost_within_its_budget(tmp_path, algorithm):
    """Every journal row says what it cost: 1 for a training of the run's length, fidelity/train_images for a shorter
    one (``fidelity`` the images), 0 for a cache hit (``cache: "run"``, ``seconds`` 0); no (mask, length) is trained
    twice; the trainings spent stay within the budget; the hall of fame holds only masks scored at the run's length;
    ``evo-sparse show`` reads the run."""
    folder = run(tiny(tmp_path, algorithm))
    rows = journal(folder)
    assert [r["gen"] for r in rows] == sorted(r["gen"] for r in rows) and rows[0]["gen"] == 0
    trained = [r for r in rows if r.get("cache") is None]
    hits = [r for r in rows if r.get("cache") is not None]
    for r in trained:
        assert r["cost"] == (r["fidelity"] / 64 if "fidelity" in r else 1.0), r
        assert r.get("fidelity") != 64
    assert all(r["cache"] == "run" and r["cost"] == 0.0 and r["seconds"] == 0.0 for r in hits)
    assert len({(r["mask"], r.get("fidelity")) for r in trained}) == len(trained)
    assert any("fidelity" in r for r in rows) and hits
    spent = sum(r["cost"] for r in rows)
    assert BUDGET - 1 < spent <= BUDGET + 1e-9

    summary = json.loads(invoke("show", str(folder), "--json").stdout)
    assert summary["algorithm"] == algorithm and summary["finished"] and summary["budget"] is None
    assert summary["trainings"] == pytest.approx(spent) and summary["cache_hits"] == len(hits)
    full = {r["mask"]: r["fitness"] for r in rows if "fidelity" not in r and r["status"] == "ok"}
    short = {r["mask"]: r["fitness"] for r in rows if "fidelity" in r}
    if algorithm == SH:
        assert set(short) - set(full)  # masks scored only at a shorter length exist: none may enter the hall of fame
    else:
        assert any(short[m] != full[m] for m in short)  # a mask scored at both lengths with different fitness
    hall_of_fame = summary["hall_of_fame"]
    assert hall_of_fame and all(e["mask"] in full and full[e["mask"]] == e["fitness"] for e in hall_of_fame)
    assert summary["best"]["fitness"] == max(full.values())
    text = invoke("show", str(folder))
    assert text.exit_code == 0 and algorithm in text.stdout and "finished" in text.stdout


def test_an_ask_tell_plugin_is_told_what_it_asked(tmp_path, monkeypatch):
    """tell() receives the proposals scored, in the order asked, as asked (a mask, or (mask, images)), with their
    fitness at that length; the budget's last ask is cut short and the run ends."""
    import toy_plugins

    told = []
    tell = toy_plugins.Batches.tell
    monkeypatch.setattr(toy_plugins.Batches, "tell", lambda self, p, f: told.append((p, f)) or tell(self, p, f))
    folder = run(tiny(tmp_path, BATCHES))
    rows = journal(folder)
    by_gen = {}
    for r in sorted(rows, key=lambda r: (r["gen"], r["index"])):  # a cache hit is written before the trainings
        by_gen.setdefault(r["gen"], []).append(r)
    assert len(told) == len(by_gen)
    for (proposals, fitnesses), gen in zip(told, sorted(by_gen)):
        assert len(proposals) == len(fitnesses) == len(by_gen[gen])
        for p, f, r in zip(proposals, fitnesses, by_gen[gen]):
            assert isinstance(p, tuple) == ("fidelity" in r) and f == r["fitness"]
            if isinstance(p, tuple):
                assert p[1] == r["fidelity"] == 32
    sizes = [len(p) for p, _ in told]
    assert sizes[0] == 3 and all(s == 5 for s in sizes[1:-1]) and sizes[-1] <= 5


# --- resume after a kill mid-run, for both kinds ----------------------------------------------------------------------

RESUMED = {
    "sh": (SH, {}),
    "batches": (BATCHES, {}),
    "local_search": (LOCAL, {}),
    "repeats": ("toy_plugins:repeats", {"search.budget": 7.0, "search.generations": 12}),
    "ga_budget": ("ga", {"search.budget": 7.0, "search.generations": 12}),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """{case: results of the run never stopped}, filled as the tests need them, each in a runs folder of its own (as
    the tests' runs are: runs of one seed in one runs folder share their scores)."""
    done = {}

    def get(case: str) -> dict:
        if case not in done:
            algorithm, flat = RESUMED[case]
            done[case] = results(run(tiny(tmp_path_factory.mktemp(case), algorithm, **flat)))
        return done[case]

    return get


@pytest.mark.parametrize("cuts", ((6,), (2, 3)), ids=("cut6", "cut2+3"))  # after, and before and after, a checkpoint
@pytest.mark.parametrize("case", RESUMED)
def test_a_run_stopped_mid_generation_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, case, cuts):
    """Stopped (Ctrl-C) right after some journal rows of a generation are written, once or twice, then run again:
    the journal (by gen and index, no row twice) and the checkpoint equal those of a run never stopped, for ask/tell
    plug-ins (replayed against the journal) and toolbox ones (restored from the checkpoint)."""
    algorithm, flat = RESUMED[case]
    cfg = tiny(tmp_path, algorithm, **flat)
    written = 0
    for n in cuts:
        with interrupted_after(n):
            run(cfg)
        written += n
        folder = folder_of(cfg)
        assert len(journal(folder)) == written  # replayed rows are reused, not written again
    assert run(cfg) == folder
    assert results(folder) == uninterrupted(case)


def test_a_killed_ask_tell_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    """SIGKILL in the middle of writing a journal line (a torn line), through the CLI in its own process: the same
    command resumes and ends with the uninterrupted run's journal and checkpoint."""
    args = [sys.executable, "-c", "from evo_sparse.cli import main; main()", "run", *TINY_ARGS]
    args += ["--generations", "3", "--algorithm", BATCHES, "--runs-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    killed = subprocess.run(args, env={**env, "EVO_SPARSE_FAULT": "kill-mid-journal=5"}, cwd=ROOT, capture_output=True)
    assert killed.returncode == -9, killed.stderr
    folder = folder_of(tiny(tmp_path, BATCHES))
    assert len((folder / "evaluations.jsonl").read_text().splitlines()) == 5  # four rows and a torn one
    resumed = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert Path(resumed.stdout.strip().splitlines()[-1]) == folder
    assert results(folder) == uninterrupted("batches")


# --- a broken plug-in stops with one line naming it; what was scored stays --------------------------------------------

BROKEN = "toy_plugins:Broken"


@pytest.mark.parametrize(
    ("fault", "needle", "rows"),
    (
        ("ask-raises", "ask() raised RuntimeError: no more ideas (second line)", 2),
        ("empty", "ask() proposed no masks", 2),
        ("not-a-list", "ask() returned NoneType, not a list of masks", 2),
        ("short-mask", "ask() proposed a mask of 223 genes, the network has 224 nodes", 2),
        ("not-binary", "ask() proposed a mask with genes other than 0 and 1", 2),
        ("sparsity", "ask() proposed a mask keeping [7, 8, 16, 16, 32, 32] nodes per unit", 2),
        ("images", "ask() gave a training length of 31 images; it must be a whole number of at least one batch", 2),
        ("tell-raises", "tell() raised ValueError: cannot learn from this", 4),
        ("init-raises", "its constructor raised RuntimeError: cannot start", 0),
    ),
)
def test_a_broken_ask_tell_plugin_stops_with_one_line_and_keeps_what_was_scored(tmp_path, fault, needle, rows):
    """Each way an ask/tell plug-in breaks its contract stops the run with exit 2 and one line naming the plug-in and
    the problem, after its first ask was scored; those rows stay, and running again reuses them (none trained again)
    and stops the same way."""
    args = ["run", *TINY_ARGS, "--runs-dir", str(tmp_path), "--algorithm", BROKEN, "--algo-opt", f"fault={fault}"]
    line = one_line_error(invoke(*args), f"algorithm {BROKEN}", needle)
    folder = folder_of(tiny(tmp_path, BROKEN, **{"search.algo_opts": f"fault={fault}"}))
    kept = journal(folder)
    assert [(r["gen"], r["status"]) for r in kept] == [(i // 2, "ok") for i in range(rows)]
    assert one_line_error(invoke(*args)) == line
    assert journal(folder) == kept
    with pytest.raises(AlgorithmError, match=re.escape(needle)):
        run(tiny(tmp_path, BROKEN, **{"search.algo_opts": f"fault={fault}"}))


def test_a_plugin_that_proposes_only_masks_scored_before_stops(tmp_path, monkeypatch):
    """A plug-in that proposes the same mask ask after ask never spends the budget: after IDLE_LIMIT proposals in a
    row that were all cache hits the run stops with an AlgorithmError naming it; the one training and the hits stay."""
    monkeypatch.setattr(asktell, "IDLE_LIMIT", 5)
    cfg = tiny(tmp_path, BROKEN, **{"search.algo_opts": "fault=same"})
    with pytest.raises(AlgorithmError, match=r"algorithm toy_plugins:Broken proposed 5 masks in a row .* loops"):
        run(cfg)
    rows = journal(folder_of(cfg))
    assert len({r["mask"] for r in rows}) == 1 and [r.get("cache") for r in rows] == [None] + ["run"] * 5
    assert [r["cost"] for r in rows] == [1.0] + [0.0] * 5


@pytest.mark.parametrize(
    ("fault", "needle", "rows"),
    (
        ("mutate-raises", "toolbox.mutate raised RuntimeError: mutation failed", 4),
        ("select-raises", "toolbox.select_parents raised IndexError: tournament of nobody", 4),
        ("setup-raises", "setup(toolbox) raised KeyError: 'missing_operator'", 0),
        ("mutate-sparsity", "nodes per unit", 4),
        ("mutate-length", "a mask of 225 genes", 4),
    ),
)
def test_a_broken_toolbox_plugin_stops_with_one_line_and_keeps_what_was_scored(tmp_path, fault, needle, rows):
    """A toolbox plug-in whose operator raises, or whose mutation gives a mask of the wrong sparsity or size, stops
    the run with exit 2 and one line naming the plug-in; generation 0's rows stay."""
    name = "toy_plugins:broken_setup"
    args = ["run", *TINY_ARGS, "--runs-dir", str(tmp_path), "--algorithm", name, "--algo-opt", f"fault={fault}"]
    one_line_error(invoke(*args), f"algorithm {name}", needle)
    kept = journal(folder_of(tiny(tmp_path, name, **{"search.algo_opts": f"fault={fault}"})))
    assert len(kept) == rows and all(r["gen"] == 0 and r["status"] == "ok" for r in kept)


# --- compare with plug-ins ------------------------------------------------------------------------------------------

COMPARE = ["compare", "--preset", "smoke", "--algorithms", f"weedout,{SH},{LOCAL}", "--runs", "3"]


def assert_paired_statistics(stdout: str) -> None:
    """Both plug-ins tested against Weedout, unpaired and paired by seed over 3 runs, and the random reference."""
    for name in (SH, LOCAL):
        line = next((x for x in stdout.splitlines() if x.startswith(f"{name} vs weedout: ")), None)
        assert line is not None, stdout
        assert re.search(
            r"Mann-Whitney U p = \S+, Cliff's delta = \S+, paired by seed Wilcoxon p = [0-9.e-]+ \(n=3\)", line
        )
    assert re.search(r"^\(random\)\s+0\.\d{4}: expected best of \d+ random masks", stdout, re.M), stdout


def test_compare_with_plugins_prints_paired_statistics(tmp_path):
    """The issue's command at the smallest settings, in this process: Weedout and both example plug-ins, 3 runs each,
    prints the paired Wilcoxon test of each plug-in against Weedout and the expected best of random masks."""
    result = invoke(*COMPARE, *TINY_ARGS[2:], "--generations", "3", "--runs-dir", str(tmp_path))
    assert result.exit_code == 0, (result.output, result.exception)
    assert_paired_statistics(result.stdout)
    comparison = json.loads((Path(result.stdout.strip().splitlines()[-1]) / "comparison.json").read_text())
    assert comparison["budget_trainings"] == BUDGET and len(comparison["runs"]) == 9
    assert all(r["trainings"] <= BUDGET + 1e-9 for r in comparison["runs"])


@pytest.mark.slow
def test_compare_command_of_the_issue(tmp_path):
    """Exactly the command of issue 14, run as a user runs it, from the repo root: exit 0, paired statistics for both
    example plug-ins and the random reference (about 80 s on 2 busy cores)."""
    command = [str(Path(sys.executable).with_name("evo-sparse")), *COMPARE, "--runs-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_paired_statistics(result.stdout)
