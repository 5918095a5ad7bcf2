"""Every command the README shows is executed here at smoke scale, so a README that drifts from the code fails.

What counts as a command (the rule):

- every line of a fenced block that is not ```python (those run as written in tests/test_scripts.py) or ```toml (a
  file: its first line, ``# NAME.toml: ...``, names it, and it is written into the working directory before any
  command runs; ``test_readme_files_are_valid_settings`` reads each), once ``\\``
  continuations are joined and ``# comments`` dropped; ``&&`` separates commands on one line, and a ``NAME="..."``
  line is a shell variable, expanded into the ``$NAME`` of the lines after it in its block;
- every inline code span that is a whole ``evo-sparse <command> <arguments>`` (at least one argument, no ``...``),
  e.g. `evo-sparse show RUN_DIR` or the `evo-sparse bench ...` of "Faster fitness".

A fenced block is a command block when a line starts with a program of PROGRAMS (or is a variable); any other fenced
block is output, and must be in OUTPUTS, where each is checked against what the code prints or writes. Each command
either runs here or is in SKIPPED with the reason it cannot: a new README command fails
``test_every_readme_command_runs_or_is_listed`` until it runs or is consciously listed.

How a command runs: every ``evo-sparse`` command goes through click's CliRunner, in README order, in one temporary
working directory shared by the whole file (so ``runs/`` and ``plots/`` land there and a later command finds what an
earlier one made; a command selected alone first runs the ones before it). It must exit 0 and leave what it promises
(a finished run, a study's results, a figure). The README text stays as it is; ``at_smoke_scale`` rewrites:

- ``--preset cpu``/``paper`` becomes ``--preset smoke`` (synthetic data, WRN-10-1), which is added where a command
  takes a preset and names none (``final`` keeps its run's preset, which is smoke); ``--data PATH`` is dropped, as the
  smoke preset's synthetic data refuses it;
- sizes are capped (CAPS: generations, population, seeds, runs, masks, replicates, epochs, ...) and, where the README
  leaves a size to a default too large for a test, set (DEFAULTS); training budgets of a cpu or paper command are
  divided by 32 (within 32..256 images; budgets that become equal are one); sparsity lists keep their first and last
  value;
- one evaluation at a time in this process (``--workers 1``) unless the command names a backend or workers: on 2
  busy cores the worker processes' start-up costs more than a smoke run (tests/test_backends.py covers them);
- placeholders are filled: a path with ``<hash>``/``<seed>`` is the latest folder an earlier command printed (its
  last stdout line) that fits the pattern, ``RUN_DIR`` the latest one ``evo-sparse run`` printed, ``<new folder each
  time>`` a new folder; ``a|b`` in an option's value runs the command once per alternative; a positional path that
  exists only in the repository (``plots/fidelity_cpu``) is copied into the working directory first, so nothing is
  written into the checkout.

The whole file takes 2-3 minutes on 2 shared cores (110 s at load 2.8, 160 s at load 4); no part is marked slow.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from evo_sparse.cli import RUN_OPTIONS, build_config, cli
from evo_sparse.foundations.config_files import read_config_file
from evo_sparse.runs.run import summarize
from evo_sparse.stats.measurement import noise_line
from evo_sparse.study.final import run_results

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# First words of a command line; a fenced block with none of them (and no variable) is output.
PROGRAMS = ("evo-sparse", "python", "python3", "pip", "ray", ".", "export")

# Commands that cannot run here, each with the reason; keys are the command as the README writes it (one space
# between words, comment dropped).
SETUP = "sets up the environment these tests run in; tests/test_readme.py checks it and CI (.ci/run) runs it"
RAY_CLUSTER = "sets up a Ray cluster across machines (daemons, a shared token); tests/test_ray_cluster.py starts one"
SKIPPED: dict[str, str] = {
    "python3 -m venv .venv": SETUP,
    ". .venv/bin/activate": SETUP,
    "pip install -e .": SETUP,
    'pip install -e ".[dev]"': SETUP,
    "python -m pytest -q": "the test suite itself, this file included",
    "ray get-auth-token --generate": RAY_CLUSTER,
    "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=TOKEN": RAY_CLUSTER,
    "ray start --head": RAY_CLUSTER,
    "ray start --address HEAD_IP:6379": RAY_CLUSTER,
    "evo-sparse run --preset paper --backend ray --address HEAD_IP:6379": (
        "needs a Ray cluster at HEAD_IP; tests/test_ray_cluster.py runs a search through --address on one it starts"
    ),
    "evo-sparse run --preset paper --backend ray --gpus-per-task 0.5": (
        "GPU only: --gpus-per-task shares the GPUs of a Ray cluster; tests/test_backends.py runs the Ray backend"
    ),
}

# Commands that fail at smoke scale through a bug in the code, not in the README: (what the error says, the bug). The
# test expects exactly that error (xfail); any other failure still fails, and once the bug is fixed the command passes.
KNOWN_BUGS: dict[str, tuple[str, str]] = {}  # command -> (message, why): an xfail only with that very message

# Sizes a command may not exceed here (the smaller of the README's value and this).
CAPS = {
    "--generations": 2,
    "--pop": 4,
    "--seeds": 1,
    "--runs": 2,
    "--masks": 3,
    "--replicates": 2,
    "--epochs": 1,
    "--final-masks": 1,
    "--final-seeds": 1,
    "--reference-epochs": 1,
    "--repeats": 1,
}
# Sizes set where the README leaves them to a default too large for a test.
DEFAULTS: dict[str, dict[str, str]] = {
    "run": {"--generations": "2", "--pop": "4"},
    "paper": {
        "--generations": "2",
        "--pop": "4",
        "--seeds": "1",
        "--sparsities": "0,0.9",
        "--epochs": "1",
        "--final-masks": "1",
        "--final-seeds": "1",
    },
    "compare": {"--generations": "2", "--pop": "4", "--runs": "2"},
    "fidelity": {"--masks": "3", "--replicates": "2"},
    "final": {"--epochs": "1", "--final-masks": "1", "--seeds": "1"},
    "bench": {"--sparsities": "0,0.9", "--pop": "4", "--repeats": "1", "--train-images": "64", "--val-images": "100"},
}
WITH_PRESET = ("run", "paper", "compare", "fidelity", "bench")  # final: the run's preset
SEARCHING = ("run", "paper", "compare", "fidelity", "final")  # take --backend and --workers


@dataclass(frozen=True)
class Command:
    """One README command: the line it is on, its text (one space between words, no comment) and its arguments
    (variables expanded, a placeholder one word)."""

    line: int
    text: str
    argv: tuple[str, ...]

    @property
    def runnable(self) -> bool:
        return self.argv[0] == "evo-sparse" and self.text not in SKIPPED


@dataclass(frozen=True)
class Block:
    line: int
    lines: tuple[str, ...]


def fenced_blocks() -> list[Block]:
    """Fenced blocks of the README, but the ```python ones and the files (``FILE_LANGUAGES``), with the line their
    first line is on."""
    found = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M):
        if m.group(1) != "python" and m.group(1) not in FILE_LANGUAGES:
            found.append(Block(README.count("\n", 0, m.start()) + 2, tuple(m.group(2).splitlines())))
    return found


FILE_LANGUAGES = ("toml",)  # fenced blocks that are files for the commands (``--config exp.toml``), not commands


def readme_files() -> dict[str, str]:
    """The README's file blocks: ``{name: text}``, the name from the first line ``# NAME: ...``."""
    files = {}
    for m in re.finditer(rf"^```(?:{'|'.join(FILE_LANGUAGES)})\n(.*?)^```", README, re.S | re.M):
        name = re.match(r"# ([\w.-]+)", m.group(1))
        assert name, f"README: a file block must start with '# NAME: ...', not {m.group(1).splitlines()[0]!r}"
        files[name.group(1).rstrip(":")] = m.group(1)
    return files


def _is_variable(segment: str) -> bool:
    return re.fullmatch(r"[A-Za-z_]\w*=\S.*", segment) is not None


def _is_command(segment: str) -> bool:
    return _is_variable(segment) or segment.split()[0] in PROGRAMS


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    """(README line, text) of each line of the block, continuations joined and comments dropped."""
    out, pending, start = [], "", 0
    for i, raw in enumerate(block.lines):
        if not pending:
            start = block.line + i
        text = raw.rstrip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text = re.sub(r"(^|\s)#.*$", "", pending + text).strip()
        pending = ""
        if text:
            out.append((start, text))
    return out


def is_command_block(block: Block) -> bool:
    return any(_is_command(seg.strip()) for _, text in _logical_lines(block) for seg in text.split("&&"))


def _argv(segment: str, variables: dict[str, str]) -> tuple[str, ...]:
    segment = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], segment)
    segment = re.sub(r"<([^<>]+)>", lambda m: "<" + "_".join(m.group(1).split()) + ">", segment)
    return tuple(shlex.split(segment))


def readme_commands() -> list[Command]:
    """Every command of the README by the module's rule, in README order, each text once."""
    found: list[Command] = []
    for block in filter(is_command_block, fenced_blocks()):
        variables: dict[str, str] = {}
        for line, text in _logical_lines(block):
            for segment in (s.strip() for s in text.split("&&")):
                if _is_variable(segment):
                    name, value = shlex.split(segment)[0].split("=", 1)
                    variables[name] = value
                else:
                    found.append(Command(line, " ".join(segment.split()), _argv(segment, variables)))
    subcommands = "|".join(cli.commands)
    for m in re.finditer(rf"`(evo-sparse (?:{subcommands}) [^`]+)`", README):
        if "..." not in m.group(1):
            found.append(Command(README.count("\n", 0, m.start()) + 1, m.group(1), _argv(m.group(1), {})))
    unique = {}
    for cmd in sorted(found, key=lambda c: c.line):
        unique.setdefault(cmd.text, cmd)
    return list(unique.values())


COMMANDS = readme_commands()
RUNNABLE = [c for c in COMMANDS if c.runnable]


# --- rewriting a command at smoke scale -------------------------------------------------------------------------


def _flags(name: str) -> set[str]:
    return {o for p in cli.commands[name].params if isinstance(p, click.Option) and p.is_flag for o in p.opts}


def split_args(argv: tuple[str, ...]) -> tuple[str, list[str], dict[str, str | None]]:
    """``evo-sparse NAME ...`` as (NAME, positional arguments, {option: value, or None for a flag}), in order."""
    name, rest = argv[1], list(argv[2:])
    flags, positional, options = _flags(name), [], {}
    while rest:
        word = rest.pop(0)
        if not word.startswith("--"):
            positional.append(word)
        elif word in flags or not rest:
            options[word] = None
        else:
            options[word] = rest.pop(0)
    return name, positional, options


def at_smoke_scale(argv: tuple[str, ...]) -> list[list[str]]:
    """The command's arguments (after ``evo-sparse``) at smoke scale by the module's rules: one list per alternative
    of an ``a|b`` value. Placeholders stay for ``Session.resolve``."""
    name, positional, options = split_args(argv)
    readme_preset = options.get("--preset")
    if name in WITH_PRESET or "--preset" in options:
        options["--preset"] = "smoke"
    options.pop("--data", None)
    for option, cap in CAPS.items():
        if options.get(option) is not None:
            options[option] = str(min(int(options[option]), cap))
    if "--keep" in options and "--pop" in options:  # a capped population still holds the README's survivors
        options["--pop"] = str(max(int(options["--pop"]), int(options["--keep"]) + 1))
    for option, value in DEFAULTS.get(name, {}).items():
        options.setdefault(option, value)
    if options.get("--sparsities"):
        levels = options["--sparsities"].split(",")
        options["--sparsities"] = ",".join(dict.fromkeys([levels[0], levels[-1]]))
    if options.get("--train-images") and readme_preset in ("cpu", "paper"):
        budgets = [min(256, max(32, int(b) // 32)) for b in options["--train-images"].split(",")]
        options["--train-images"] = ",".join(map(str, dict.fromkeys(budgets)))
    if name in SEARCHING and "--backend" not in options and "--workers" not in options:
        options["--workers"] = "1"
    parts = [[[name]], *([[p]] for p in positional)]  # each part: its alternatives, each a list of words
    for option, value in options.items():
        parts.append([[option]] if value is None else [[option, v] for v in value.split("|")])
    return [[word for alternative in choice for word in alternative] for choice in itertools.product(*parts)]


# --- running commands in order ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one rewritten command ended: its arguments and CliRunner's result, or why it could not start."""

    argv: list[str]
    result: Result | None = None
    error: str | None = None


class Session:
    """A temporary working directory in which the README's commands run in order; remembers each one's outcomes and
    the folder each printed last."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.outcomes: dict[str, list[Outcome]] = {}
        self.printed: list[tuple[str, str]] = []  # (subcommand, last stdout line), oldest first
        self.fresh = itertools.count()

    def invoke(self, args: list[str]) -> Result:
        before = os.getcwd()
        os.chdir(self.cwd)
        try:
            return CliRunner().invoke(cli, args)  # a crash is kept in the result, so later commands still run
        finally:
            os.chdir(before)

    def resolve(self, word: str) -> str:
        """A placeholder as the folder it stands for; any other word as it is."""
        if word == "RUN_DIR":
            runs = [last for name, last in self.printed if name == "run"]
            assert runs, "no earlier `evo-sparse run` printed a run folder for RUN_DIR"
            return runs[-1]
        if re.fullmatch(r"<new\w*>", word):
            return f"new_{next(self.fresh)}"
        if "<" not in word:
            return word
        pattern = re.compile(
            "".join("[^/]+" if p.startswith("<") else re.escape(p) for p in re.split(r"(<\w+>)", word))
        )
        fits = [last for _, last in self.printed if pattern.fullmatch(last.rstrip("/"))]
        assert fits, f"no earlier README command printed a folder like {word}"
        return fits[-1]

    def run(self, cmd: Command) -> list[Outcome]:
        """Run ``cmd`` (after every runnable README command before it, once each)."""
        for earlier in RUNNABLE[: RUNNABLE.index(cmd)]:
            self._once(earlier)
        return self._once(cmd)

    def _once(self, cmd: Command) -> list[Outcome]:
        if cmd.text not in self.outcomes:
            self.outcomes[cmd.text] = [self._start(args) for args in at_smoke_scale(cmd.argv)]
        return self.outcomes[cmd.text]

    def _start(self, args: list[str]) -> Outcome:
        try:
            args = [self.resolve(w) for w in args]
        except AssertionError as exc:  # kept, so that the commands after this one still run
            return Outcome(args, error=str(exc))
        for path in split_args(("evo-sparse", *args))[1]:
            if not (self.cwd / path).exists() and (ROOT / path).is_dir():
                shutil.copytree(ROOT / path, self.cwd / path)
        result = self.invoke(args)
        if result.exit_code == 0 and result.stdout.strip() and "--print-config" not in args:  # TOML, not a folder
            self.printed.append((args[0], result.stdout.strip().splitlines()[-1]))
        return Outcome(args, result)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    cwd = tmp_path_factory.mktemp("readme")
    for name, text in readme_files().items():
        (cwd / name).write_text(text)
    shutil.copytree(ROOT / "examples", cwd / "examples")  # --algorithm examples.<module>:<name>, found from the cwd
    return Session(cwd)


# --- what each command must leave ---------------------------------------------------------------------------------


def _folder(session: Session, result: Result, *files: str) -> Path:
    folder = session.cwd / result.stdout.strip().splitlines()[-1]
    assert folder.is_dir(), f"the last line {folder} is not a folder"
    for name in files:
        assert (folder / name).exists(), f"{folder} has no {name}"
    return folder


def _check_run(session, args, result):
    if "--print-config" in args:  # the settings as TOML, the options given over the file over the preset; no run
        options = split_args(("evo-sparse", *args))[2]
        printed = tomllib.loads(result.stdout)
        assert printed["preset"] == options["--preset"], result.stdout
        assert printed["search"]["generations"] == int(options["--generations"]), result.stdout
        return
    summary = summarize(_folder(session, result, "config.json", "evaluations.jsonl", "checkpoint.json"))
    assert summary["finished"] and summary["failed_evaluations"] == 0
    assert summary["generations_done"] == int(split_args(("evo-sparse", *args))[2]["--generations"])


def _check_list(session, args, result):
    """One line per folder under a header; every run folder printed before is on it, and none is damaged."""
    header, *lines = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["KIND", "FOLDER", "STATUS"] and lines, result.stdout
    runs_dir = (split_args(("evo-sparse", *args))[1] or ["runs"])[0]
    printed = [Path(last) for name, last in session.printed if name == "run"]
    folders = {str(p.relative_to(runs_dir)) for p in printed if p.parts[0] == runs_dir}
    assert folders and all(any(f" {f} " in line for line in lines) for f in folders), result.stdout
    assert not any(line.split()[2] == "damaged" for line in lines), result.stdout


def _check_statuses(rows: list[dict]) -> None:
    assert rows and all(r["status"] == "ok" for r in rows), [r.get("reason") for r in rows if r["status"] != "ok"]


def _check_paper(session, args, result):
    folder = _folder(session, result, "results.json", "analysis.json", "study.json", "accuracy_vs_sparsity.png")
    rows = json.loads((folder / "results.json").read_text())
    _check_statuses(rows)
    levels = {float(s) for s in split_args(("evo-sparse", *args))[2]["--sparsities"].split(",")}
    kinds = {"found", "random"} | ({"dense"} if 0 in levels else set())  # sparsity 0 stands for the dense parent
    assert {r["sparsity"] for r in rows} == levels and {r["kind"] for r in rows} == kinds


def _check_compare(session, args, result):
    _folder(session, result, "comparison.json", "best_so_far.png")
    algorithms = split_args(("evo-sparse", *args))[2]["--algorithms"].split(",")
    assert all(a in result.stdout for a in algorithms), result.stdout


def _check_fidelity(session, args, result):
    _folder(session, result, "fidelity.json", "trainings.jsonl", "fidelity_reliability.png")
    assert "ICC(1)" in result.stdout


def _check_final(session, args, result):
    records = run_results(_folder(session, result).parent)  # the run's networks and its dense parent's
    _check_statuses(records)
    assert {r["kind"] for r in records} == {"found", "random", "dense"}
    assert {r["epochs"] for r in records} == {int(split_args(("evo-sparse", *args))[2]["--epochs"])}


def _check_plot(session, args, result):
    *figures, out = result.stdout.strip().splitlines()
    out_option = split_args(("evo-sparse", *args))[2].get("--out", "plots")
    assert out == out_option and figures and all((session.cwd / f).is_file() for f in figures), result.stdout


def _check_show(session, args, result):
    first = result.stdout.splitlines()[0].split()
    assert first == ["run", args[1]], result.stdout
    assert "finished" in result.stdout and "best" in result.stdout


def _check_bench(session, args, result):
    report = json.loads(result.stdout.strip().splitlines()[-1])
    levels = split_args(("evo-sparse", *args))[2]["--sparsities"].split(",")
    assert {f"b_over_a@{float(s)}" for s in levels} <= set(report["ratios"]), report["ratios"]


CHECKS: dict[str, Callable] = {
    "run": _check_run,
    "paper": _check_paper,
    "compare": _check_compare,
    "fidelity": _check_fidelity,
    "final": _check_final,
    "plot": _check_plot,
    "show": _check_show,
    "bench": _check_bench,
    "list": _check_list,
}


# --- the tests ----------------------------------------------------------------------------------------------------


def test_every_readme_command_runs_or_is_listed():
    assert len(RUNNABLE) >= 15, [c.text for c in RUNNABLE]  # the rule still finds the README's commands
    for cmd in COMMANDS:
        assert cmd.runnable or cmd.text in SKIPPED, f"README line {cmd.line}: {cmd.text!r} neither runs nor is listed"
        if cmd.runnable:
            assert cmd.argv[1] in CHECKS, f"README line {cmd.line}: no check says what `{cmd.argv[1]}` must leave"
    texts = {c.text for c in COMMANDS}
    assert not set(SKIPPED) - texts, f"listed but no longer in the README: {set(SKIPPED) - texts}"
    for block in fenced_blocks():
        if is_command_block(block):
            for line, text in _logical_lines(block):
                for segment in (s.strip() for s in text.split("&&")):
                    assert _is_command(segment), f"README line {line}: {segment!r} is neither a command nor output"
        else:
            assert any(block.lines[0].startswith(k) for k in OUTPUTS), f"README line {block.line}: unlisted output"


@pytest.mark.parametrize("cmd", RUNNABLE, ids=[f"L{c.line}-{c.argv[1]}" for c in RUNNABLE])
def test_readme_command_runs_at_smoke_scale(session, cmd):
    for outcome in session.run(cmd):
        assert outcome.error is None, f"{cmd.text}: {outcome.error}"
        result = outcome.result
        if result.exit_code != 0 and cmd.text in KNOWN_BUGS:
            message, reason = KNOWN_BUGS[cmd.text]
            if message in str(result.exception):
                pytest.xfail(reason)
        crash = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        assert result.exit_code == 0, f"{cmd.text}\nran as: {shlex.join(outcome.argv)}\n{result.output[-3000:]}{crash}"
        CHECKS[outcome.argv[0]](session, outcome.argv, result)


def test_readme_files_are_valid_settings(tmp_path):
    """Each file block is a settings file the commands read, and a README command uses it."""
    files = readme_files()
    assert files
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        read_config_file(tmp_path / name)  # ConfigError for an unknown key or a mistyped value
        assert any(f"--config {name}" in c.text for c in RUNNABLE), f"no README command uses {name}"


def test_skipped_evo_sparse_commands_still_parse():
    """A command that cannot run here still names only options that exist, with values its config accepts."""
    skipped = [c for c in COMMANDS if c.argv[0] == "evo-sparse" and not c.runnable]
    assert skipped
    for cmd in skipped:
        command = cli.commands[cmd.argv[1]]
        params = command.make_context(cmd.argv[1], list(cmd.argv[2:])).params
        if cmd.argv[1] == "run":  # its settings, without the flags that are not settings (--quiet, --print-config)
            settings = {k: v for k, v in params.items() if k.replace("_", "-") in RUN_OPTIONS}
            build_config(params["preset"], settings, read_config_file(params["config"]) if params["config"] else None)


def test_readme_error_line_is_the_one_printed():
    """The README quotes the line a bad value stops with; its command is the main one with that value."""
    quoted = re.search(r"`(evo-sparse: error: --keep must be [^`]*)`", README).group(1)
    keep = quoted.rsplit("not ", 1)[1]
    main = next(c for c in COMMANDS if c.text.startswith("evo-sparse run --generations"))
    result = CliRunner().invoke(cli, [*main.argv[1:], "--keep", keep])
    assert result.exit_code == 2 and result.stderr.strip() == quoted, result.output


# --- output blocks ------------------------------------------------------------------------------------------------


def _check_run_folder_listing(session: Session, block: Block) -> None:
    """The listing names exactly the files of a finished run folder (``final`` adds its own folders beside them)."""
    listed = {line.split()[0] for line in block.lines[1:] if line.strip()}
    runs = [c for c in RUNNABLE if c.argv[1] == "run"]
    folder = session.cwd / session.run(runs[0])[0].result.stdout.strip().splitlines()[-1]
    assert listed == {p.name for p in folder.iterdir() if p.is_file()}


def _check_noise_line(session: Session, block: Block) -> None:
    """The line is what ``noise_line`` prints for the numbers it shows."""
    (shown,) = block.lines
    shape = r"mean of (\d+) .* sd ([\d.]+);.* than ([\d.]+) .* sd ([\d.]+); reliability ([\d.]+) \(from (\d+) masks\)"
    numbers = re.search(shape, shown).groups()
    keys = ("replicates", "fitness_sd", "difference_95", "between_sd", "reliability_of_mean", "masks")
    noise = {"measured": True} | {k: (int if k in ("replicates", "masks") else float)(v) for k, v in zip(keys, numbers)}
    assert noise_line(noise) == shown


# First line of each output block -> the check it gets.
OUTPUTS: dict[str, Callable[[Session, Block], None]] = {
    "runs/weedout_<hash>/seed_<seed>/": _check_run_folder_listing,
    "noise    one fitness": _check_noise_line,
}


@pytest.mark.parametrize("prefix", list(OUTPUTS))
def test_readme_output_is_what_the_code_writes(session, prefix):
    blocks = [b for b in fenced_blocks() if not is_command_block(b) and b.lines[0].startswith(prefix)]
    assert len(blocks) == 1, prefix
    OUTPUTS[prefix](session, blocks[0])
