"""Search algorithms by name: the built-ins (weedout, ga), plug-ins that installed packages declare under the
``evo_sparse.algorithms`` entry-point group, and any ``package.module:name``.

A plug-in is one of two kinds, told apart by what its name points to:

- **toolbox**: a function ``setup(toolbox)``. It registers DEAP operators on the run's toolbox (``mate``, ``mutate``,
  ``select`` for the survivors, ``select_parents``; ``toolbox.cxpb`` and ``toolbox.mutpb`` may be set), which starts
  with the GA's. The generational loop (``algorithms.evolve``) runs them, checkpointed after every generation.
- **ask/tell**: a class built as ``cls(toolbox)``, with ``ask()`` returning a list of proposals (a mask, a list of 0/1;
  or ``(mask, train_images)`` to score it with a training of another length, the multi-fidelity knob) and
  ``tell(proposals, fitnesses)`` receiving the proposals that were scored with their validation accuracy (None when
  the training failed). The run asks until its budget of trainings is spent (``asktell.run``). A resumed run builds
  the class afresh and replays it against the journal, so it must draw its randomness from ``toolbox.rng``.

Either receives the toolbox with ``sample()`` (a fresh random mask at the run's sparsity), ``repair(mask)`` (back to
that sparsity, in place), ``layout`` (the units: ``layout.spans()``), ``rng`` (Python's ``random``, seeded by the
run and saved in its checkpoints), ``options``, ``sparsity``, ``population_size``, ``keep``, ``budget`` (trainings)
and ``train_images`` (the length of one brief training). It may declare ``options``, a dict of defaults that
``--algo-opt key=value`` sets (converted to the default's type), ``check_options(options)`` raising ValueError for a bad
value, and ``version``. A run folder's hash includes the algorithm's name, options and source (``identity``): two
methods never share a folder, and a changed plug-in never resumes a run of the old one.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evo_sparse.foundations.config import ALGORITHMS, RunConfig
from evo_sparse.foundations.errors import AlgorithmError, ConfigError

GROUP = "evo_sparse.algorithms"
BUILTIN, TOOLBOX, ASK_TELL = "builtin", "toolbox", "ask/tell"
DESCRIPTIONS = {
    "weedout": "Random Search: keep the best K, restart the others as fresh random masks",
    "ga": "genetic algorithm: tournament parents, unit or uniform crossover, count-preserving swap mutation",
}


@dataclass(frozen=True)
class Algorithm:
    """A resolved algorithm: its ``name`` as given, ``kind`` (builtin, toolbox or ask/tell), the ``target`` object
    (None for a built-in), its option defaults, and ``source``: version and fingerprint ("" for a built-in)."""

    name: str
    kind: str
    target: Any = None
    defaults: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def builtin(self) -> bool:
        return self.kind == BUILTIN

    def options(self, text: str) -> dict[str, Any]:
        """The options ``key=value,...`` set, over the defaults, checked; ConfigError in one line otherwise."""
        given = parse_options(self, text)
        options = {**self.defaults, **given}
        check = getattr(self.target, "check_options", None)
        if check is not None:
            try:
                check(dict(options))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"--algo-opt for {self.name}: {exc}") from None
        return options


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The plug-ins installed packages declare, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def resolve(name: str) -> Algorithm:
    """The algorithm ``name`` names; ConfigError (one line, with the import's own message) when it cannot be had."""
    if name in ALGORITHMS:
        return Algorithm(name, BUILTIN)
    installed = entry_points()
    if name in installed:
        ep = installed[name]
        target = _load(name, ep.load)
        dist = getattr(ep, "dist", None)
        version = f"{dist.name} {dist.version}" if dist is not None else ""
        return _algorithm(name, target, version)
    if ":" not in name:
        known = [*ALGORITHMS, *installed]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"--algorithm {name!r} is not a known algorithm; {hint}choose one of {', '.join(known)} "
            "(evo-sparse algorithms lists them) or give package.module:name"
        )
    module, _, attr = name.partition(":")

    def load():
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` does: a module beside the user is found
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    return _algorithm(name, _load(name, load), "")


def _load(name: str, load) -> Any:
    try:
        return load()
    except Exception as exc:  # an import runs the plug-in's code: any error is the plug-in's, said in one line
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"--algorithm {name}: cannot import it ({type(exc).__name__}: {message})") from None


def _algorithm(name: str, target: Any, version: str) -> Algorithm:
    if inspect.isclass(target) and callable(getattr(target, "ask", None)) and callable(getattr(target, "tell", None)):
        kind = ASK_TELL
    elif callable(target) and not inspect.isclass(target):
        kind = TOOLBOX
    else:
        raise ConfigError(
            f"--algorithm {name} is a {type(target).__name__}: give a setup(toolbox) function or a class with ask() "
            "and tell(proposals, fitnesses)"
        )
    defaults = getattr(target, "options", None) or {}
    if not isinstance(defaults, dict) or not all(isinstance(k, str) for k in defaults):
        raise ConfigError(f"--algorithm {name}: its options must be a dict of name: default, not {defaults!r}")
    own = getattr(target, "version", None)
    parts = [p for p in (version, f"version {own}" if own else "", f"source {fingerprint(target)}") if p]
    return Algorithm(name, kind, target, dict(defaults), "; ".join(parts))


def fingerprint(target: Any) -> str:
    """12 hex digits of the SHA-256 of the file that defines ``target``: its source, else its compiled file, else (a
    module with no file) its module and name, the same in every process."""
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    data = f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', type(target).__name__)}".encode()
    for find in (lambda: inspect.getsourcefile(module), lambda: getattr(module, "__file__", None)):
        try:
            path = find() if module is not None else None
            if path:
                with open(path, "rb") as f:
                    data = f.read()
                break
        except (OSError, TypeError):
            continue
    return hashlib.sha256(data).hexdigest()[:12]


def parse_options(algorithm: Algorithm, text: str) -> dict[str, Any]:
    """``key=value,...`` as the options it sets, each converted to its default's type; ConfigError otherwise."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--algo-opt {item!r} is not key=value")
        if key not in algorithm.defaults:
            known = ", ".join(algorithm.defaults) or "none"
            close = difflib.get_close_matches(key, list(algorithm.defaults), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"--algo-opt {key}: {algorithm.name} has no such option; {hint}its options: {known}")
        out[key] = _converted(algorithm.name, key, value.strip(), algorithm.defaults[key])
    return out


def _converted(name: str, key: str, value: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ConfigError(
            f"--algo-opt {key}={value}: {name} wants a {type(default).__name__} there (default {default!r})"
        ) from None
    return value


def canonical_options(options: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The options that differ from the defaults as a sorted ``key=value,...`` (what the run folder's hash sees)."""
    return ",".join(f"{k}={options[k]!r}" for k in sorted(options) if options[k] != defaults.get(k))


def identify(cfg: RunConfig) -> tuple[RunConfig, Algorithm, dict[str, Any]]:
    """(``cfg`` with its options in canonical form and ``search.algorithm_source`` filled in, the algorithm, its
    options). ConfigError when the algorithm cannot be had, an option is wrong, or ``cfg`` was written by another
    version of the plug-in (a resumed run would mix two algorithms)."""
    s = cfg.search
    algorithm = resolve(s.algorithm)
    if algorithm.builtin and s.algo_opts.strip():
        raise ConfigError(f"--algo-opt is for plug-in algorithms; {s.algorithm} takes its settings as options")
    options = algorithm.options(s.algo_opts)
    if s.algorithm_source and s.algorithm_source != algorithm.source:
        raise ConfigError(
            f"--algorithm {s.algorithm} changed since this config was written ({s.algorithm_source} there, "
            f"{algorithm.source} now); restore that version to resume the run, or leave the config's "
            "algorithm_source out to start a new one"
        )
    cfg = cfg.updated(
        {
            "search.algo_opts": canonical_options(options, algorithm.defaults),
            "search.algorithm_source": algorithm.source,
        }
    )
    return cfg, algorithm, options


def available() -> list[dict[str, str]]:
    """Every algorithm this installation knows: the built-ins, then the installed plug-ins (name, kind, where from,
    options, description). A plug-in that fails to import is listed with the reason."""
    rows = [
        {"name": n, "kind": BUILTIN, "from": "evo_sparse", "options": "", "description": DESCRIPTIONS[n]}
        for n in ALGORITHMS
    ]
    for name, ep in sorted(entry_points().items()):
        row = {"name": name, "from": ep.value, "options": "", "description": ""}
        try:
            algorithm = resolve(name)
        except ConfigError as exc:
            rows.append(row | {"kind": "broken", "description": str(exc)})
            continue
        doc = (inspect.getdoc(algorithm.target) or "").split("\n")[0]
        options = ",".join(f"{k}={v!r}" for k, v in algorithm.defaults.items())
        rows.append(row | {"kind": algorithm.kind, "options": options, "description": doc})
    return rows


# --- a plug-in in the run --------------------------------------------------------------------------------------------

OPERATORS = ("mate", "mutate", "select", "select_parents")


def install(toolbox: Any, algorithm: Algorithm, options: dict[str, Any]) -> Any:
    """Put ``algorithm`` on the run's ``toolbox``: a toolbox plug-in's ``setup`` registers its operators (each then
    raising AlgorithmError, naming it, when it fails); an ask/tell plug-in is built and returned (None otherwise)."""
    toolbox.options = dict(options)
    name = algorithm.name
    if algorithm.kind == ASK_TELL:
        searcher = guarded(name, "its constructor", lambda: algorithm.target(toolbox))
        if not callable(getattr(searcher, "ask", None)) or not callable(getattr(searcher, "tell", None)):
            raise AlgorithmError(f"algorithm {name}: its instance has no ask() and tell()")
        return searcher
    if algorithm.kind == TOOLBOX:
        before = {op: getattr(toolbox, op) for op in OPERATORS}
        guarded(name, "setup(toolbox)", lambda: algorithm.target(toolbox))
        for op in OPERATORS:
            if getattr(toolbox, op) is not before[op]:
                toolbox.register(op, _guarding(name, op, getattr(toolbox, op)))
        toolbox.register("check", _checking(name, toolbox.check))
    return None


def _checking(name: str, check: Callable) -> Callable:
    """``toolbox.check`` whose refusal of a mask the plug-in's operators made is an AlgorithmError naming it."""

    def call(genome) -> None:
        try:
            check(genome)
        except ValueError as exc:
            raise AlgorithmError(
                f"algorithm {name}: its operators made {exc}; what was scored is kept, fix the plug-in and run the "
                "same command to resume"
            ) from None

    return call


def _guarding(name: str, op: str, fn: Callable) -> Callable:
    def call(*args, **kwargs):
        return guarded(name, f"toolbox.{op}", lambda: fn(*args, **kwargs))

    return call


def guarded(name: str, what: str, call: Callable[[], Any]) -> Any:
    """``call()``; an AlgorithmError naming the plug-in and its exception when it raises (Ctrl-C passes)."""
    try:
        return call()
    except AlgorithmError:
        raise
    except Exception as exc:
        message = " ".join(str(exc).split()) or "no message"
        raise AlgorithmError(
            f"algorithm {name}: {what} raised {type(exc).__name__}: {message}; what was scored is kept, fix the "
            "plug-in and run the same command to resume"
        ) from exc
