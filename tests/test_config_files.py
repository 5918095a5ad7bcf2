"""``--config FILE`` and ``--print-config``: TOML and a run folder's config.json, preset < file < options, one-line
errors naming the key and the closest valid one, and files that reproduce the run they describe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from evo_sparse.cli import build_config, cli
from evo_sparse.foundations.config import FinalConfig, RunConfig
from evo_sparse.foundations.config_files import read_config_file, settings_toml, toml_value
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.presets import final_preset, preset
from evo_sparse.runs.run import read_config

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

SMALL = ["--generations", "2", "--pop", "4", "--workers", "1", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evo-sparse: error: "), result.stderr
    return lines[0].removeprefix("evo-sparse: error: ")


# --- the file and its checks ------------------------------------------------------------------------------------------


def test_toml_tables_map_to_the_config_groups(tmp_path):
    file = read_config_file(
        write(
            tmp_path / "exp.toml",
            'preset = "smoke"\nseed = 3\nbackend = "local"\n[search]\nsparsity = 0.7\nalgorithm = "ga"\n'
            "[train]\nlr = 1\ncompile = false\n[data]\nval_size = 500\n[final]\nepochs = 3\nschedule = 'cosine'\n",
        )
    )
    assert file.preset == "smoke"
    assert file.run == {
        "seed": 3,
        "backend": "local",
        "search.sparsity": 0.7,
        "search.algorithm": "ga",
        "train.lr": 1.0,
        "train.compile": False,
        "data.val_size": 500,
    }
    assert isinstance(file.run["train.lr"], float)  # an integer for a float setting hashes as the float
    assert file.final == {"epochs": 3, "schedule": "cosine"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[train]\nlrr = 0.1\n", "--config exp.toml: unknown key train.lrr; did you mean train.lr?"),
        ("sed = 1\n", "--config exp.toml: unknown key sed; did you mean seed?"),
        ("[serch]\nsparsity = 0.5\n", "--config exp.toml: unknown key serch; did you mean search?"),
        ("[final]\nepoch = 2\n", "--config exp.toml: unknown key final.epoch; did you mean final.epochs?"),
        ("colour = 'red'\n", "--config exp.toml: unknown key colour; --print-config shows every key"),
        ("[search]\npopulation = 'many'\n", "--config exp.toml: search.population must be an integer, not 'many'"),
        ("[search]\npopulation = 2.5\n", "--config exp.toml: search.population must be an integer, not 2.5"),
        ("seed = true\n", "--config exp.toml: seed must be an integer, not True"),
        ("[train]\nlr = '0.1'\n", "--config exp.toml: train.lr must be a number, not '0.1'"),
        ("[train]\ncompile = 1\n", "--config exp.toml: train.compile must be true or false, not 1"),
        ("[model]\nname = 16\n", "--config exp.toml: model.name must be a string, not 16"),
        ("search = 0.5\n", "--config exp.toml: search must be a table ([search] with its settings below), not 0.5"),
        (
            "[search]\nsampling = 'globl'\n",
            "--config exp.toml: search.sampling must be one of layerwise, global, not 'globl'; did you mean 'global'?",
        ),
        ("preset = 'smok'\n", "--config exp.toml: preset must be one of smoke, cpu, paper, not 'smok'; did you mean"),
        ("seed = \n", "--config exp.toml: is not valid TOML (Invalid value (at line 1, column 8))"),
    ],
)
def test_bad_files_stop_with_one_line_naming_the_key(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "exp.toml", text)
    with pytest.raises(ConfigError) as err:
        read_config_file("exp.toml")
    assert str(err.value).startswith(message)
    assert one_line_error(invoke("run", "--config", "exp.toml", "--quiet")).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]  # nothing written


def test_a_json_file_of_another_schema_or_shape_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"has schema 1, this evo-sparse reads 2; write the settings again"):
        read_config_file(write(tmp_path / "config.json", json.dumps({"schema": 1, "seed": 0})))
    with pytest.raises(ConfigError, match=r"must hold a JSON object, not list"):
        read_config_file(write(tmp_path / "config.json", "[]"))
    with pytest.raises(ConfigError, match=r"config.json: is not valid JSON"):
        read_config_file(write(tmp_path / "config.json", "{"))
    with pytest.raises(ConfigError, match=r"unknown key search.sparsityy; did you mean search.sparsity\?"):
        read_config_file(write(tmp_path / "config.json", json.dumps({"search": {"sparsityy": 0.5}})))


# --- the TOML writer --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -3, 2**40, 0.1 + 0.2, 1e-5, 5e-4, 1e300, -0.0, 2.0, math.inf, -math.inf, True, False, "", "a \"b\" \\ c\n\té",
     [1, 2], ["x", "y"], [0.5, 1e-9], []],
)  # fmt: skip
def test_toml_values_read_back_exactly(value):
    back = tomllib.loads(f"v = {toml_value(value)}\n")["v"]
    assert back == value and type(back) is type(value if not isinstance(value, tuple) else list(value))
    assert math.copysign(1, back) == math.copysign(1, value) if isinstance(value, float) else True


def test_nan_and_other_types():
    assert math.isnan(tomllib.loads(f"v = {toml_value(math.nan)}")["v"])
    with pytest.raises(ValueError, match="no TOML for dict"):
        toml_value({"a": 1})


@pytest.mark.parametrize("name", ["smoke", "cpu", "paper"])
def test_printed_settings_read_back_to_the_same_configs(tmp_path, name):
    cfg = preset(name).updated({"seed": 7, "train.weight_decay": 1e-5, "data.path": 'd:\\data "x"', "address": "h:1"})
    fc = final_preset(name).updated({"epochs": 3})
    file = read_config_file(write(tmp_path / "s.toml", settings_toml(cfg, fc)))
    assert file.preset == name
    assert file.run_config(preset(name)) == cfg and file.run_config(RunConfig(preset=name)) == cfg
    assert file.final_config(FinalConfig()) == fc
    unset = settings_toml(preset(name))
    assert "# path = (not set)" in unset and "# address = (not set)" in unset  # TOML has no null
    assert read_config_file(write(tmp_path / "u.toml", unset)).run_config(preset(name)) == preset(name)


# --- precedence and the commands ----------------------------------------------------------------------------------


def test_preset_then_file_then_options_given(tmp_path):
    exp = write(tmp_path / "exp.toml", 'preset = "cpu"\n[train]\nlr = 0.07\n[search]\nsparsity = 0.7\npopulation = 8\n')
    file = read_config_file(exp)
    cfg = build_config(None, {"sparsity": 0.6}, file)
    assert cfg.preset == "cpu" and cfg.train.lr == 0.07 and cfg.search.population == 8
    assert cfg.search.sparsity == 0.6  # the option given wins over the file
    assert cfg.train.replicates == preset("cpu").train.replicates  # the rest is the file's preset
    smoke = build_config("smoke", {}, file)  # --preset given wins over the file's preset
    assert smoke.preset == "smoke" and smoke.data.dataset == "synthetic" and smoke.train.lr == 0.07
    result = invoke("run", "--config", str(exp), "--preset", "smoke", "--pop", "5", "--print-config")
    printed = tomllib.loads(result.stdout)
    assert printed["preset"] == "smoke" and printed["search"]["population"] == 5 and printed["train"]["lr"] == 0.07


def test_every_searching_command_takes_a_config_file_and_prints_it(tmp_path):
    exp = write(
        tmp_path / "exp.toml",
        'preset = "smoke"\nseed = 2\n[train]\nlr = 0.07\n[final]\nepochs = 3\n[search]\nsparsity = 0.6\n',
    )
    for command in ("run", "paper", "compare", "fidelity"):
        result = invoke(command, "--config", str(exp), "--print-config", "--runs-dir", str(tmp_path / "r"))
        assert result.exit_code == 0, result.output
        printed = tomllib.loads(result.stdout)
        assert printed["train"]["lr"] == 0.07 and printed["runs_dir"] == str(tmp_path / "r"), command
        assert ("final" in printed) == (command == "paper"), command  # compare: only with --final-train
    printed = tomllib.loads(invoke("compare", "--config", str(exp), "--final-train", "--print-config").stdout)
    assert printed["final"]["epochs"] == 3 and printed["final"]["schedule"] == "onecycle"  # the smoke recipe
    printed = tomllib.loads(invoke("paper", "--config", str(exp), "--epochs", "4", "--print-config").stdout)
    assert printed["final"]["epochs"] == 4
    assert not (tmp_path / "r").exists()  # --print-config runs nothing


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = invoke("run", "--preset", "smoke", "--sparsity", "0.6", *SMALL, "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_folders_config_json_names_the_same_run_again(smoke_run):
    before = files(smoke_run.parent.parent)
    result = invoke("run", "--config", str(smoke_run / "config.json"), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(smoke_run) and "run already finished" in result.stderr
    assert files(smoke_run.parent.parent) == before  # nothing new computed or written
    assert build_config(None, {}, read_config_file(smoke_run / "config.json")) == read_config(smoke_run / "config.json")


def test_printed_config_of_a_run_reproduces_it(smoke_run, tmp_path):
    printed = invoke("run", "--config", str(smoke_run / "config.json"), "--print-config").stdout
    toml = write(tmp_path / "again.toml", printed)
    assert build_config(None, {}, read_config_file(toml)) == read_config(smoke_run / "config.json")
    assert invoke("run", "--config", str(toml), "--print-config").stdout == printed
    result = invoke("run", "--config", str(toml), "--quiet")
    assert result.exit_code == 0 and result.stdout.strip().splitlines()[-1] == str(smoke_run), result.output


def test_final_takes_its_recipe_and_where_it_runs_from_the_file(smoke_run, tmp_path):
    exp = write(tmp_path / "f.toml", 'device = "cpu"\nworkers = 1\n[final]\nepochs = 3\nseeds = 1\n[train]\nlr = 9.0\n')
    result = invoke("final", str(smoke_run), "--config", str(exp), "--seeds", "2", "--print-config")
    assert result.exit_code == 0, result.output
    printed = tomllib.loads(result.stdout)
    assert printed["device"] == "cpu" and printed["workers"] == 1 and set(printed) == {
        "device", "backend", "workers", "max_retries", "final"
    }  # fmt: skip
    assert printed["final"]["epochs"] == 3 and printed["final"]["seeds"] == 2  # --seeds given wins
    assert printed["final"]["schedule"] == "onecycle"  # the run's preset (smoke) recipe underneath
    assert not list(smoke_run.glob("final_*"))
