"""Settings from a file (``--config FILE``) and back (``--print-config``).

Two layouts are read. TOML: the run's own settings at the top (``preset``, ``seed``, ``device``, ``backend``, ...),
a table per group (``[data]``, ``[model]``, ``[train]``, ``[search]``) and, for the commands that train fully,
``[final]`` (``FinalConfig``'s fields). JSON: a folder's ``config.json`` as ``RunConfig.to_dict`` writes it (with its
top-level ``schema``), so ``evo-sparse run --config runs/<...>/config.json`` names the same run folder again.

Every key is checked when the file is read: an unknown key, a value of the wrong type or outside its choices is a
ConfigError of one line naming the file, the key and the closest valid one. Which keys a command uses, and in which
order they override one another (preset < file < options given), is the command line's business.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import GROUPS, FinalConfig, RunConfig, run_fields
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.presets import PRESETS
from evo_sparse.foundations.storage import SCHEMA_VERSION

FINAL = "final"  # the table of the full-training recipe


RUN_KEYS = run_fields()  # "seed", "search.sparsity", ...
FINAL_KEYS = {f"{FINAL}.{f.name}": f for f in fields(FinalConfig)}  # "final.epochs", ...
TABLES = (*GROUPS, FINAL)


@dataclass(frozen=True)
class ConfigFile:
    """A settings file, read and checked: ``run`` holds RunConfig settings by dotted name (``{"search.sparsity":
    0.9}``, ``preset`` apart), ``final`` FinalConfig settings by field name (``{"epochs": 2}``)."""

    path: str
    preset: str | None = None
    run: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)

    def run_config(self, base: RunConfig) -> RunConfig:
        """``base`` with this file's run settings applied (not validated)."""
        return base.updated(self.run)

    def final_config(self, base: FinalConfig) -> FinalConfig:
        """``base`` with this file's ``[final]`` settings applied (not validated)."""
        return dataclasses.replace(base, **self.final)


def read_config_file(path: str | Path) -> ConfigFile:
    """Read and check a ``.toml`` file or a folder's ``config.json`` (any name ending in ``.json``); ConfigError of
    one line, starting ``--config PATH:``, for anything unreadable, unknown or mistyped."""
    where = f"--config {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not a text file (TOML or a folder's config.json)") from None
    data = _parse_json(text, where) if str(path).endswith(".json") else _parse_toml(text, where)
    if str(path).endswith(".json"):
        if data.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ConfigError(
                f"{where}: has schema {data['schema']!r}, this evo-sparse reads {SCHEMA_VERSION}; write the settings "
                "again with --print-config"
            )
        data = {k: v for k, v in data.items() if k != "schema"}
    flat = _flatten(data, where)
    checked = {key: _checked(key, value, where) for key, value in flat.items()}
    preset = checked.pop("preset", None)
    return ConfigFile(
        path=str(path),
        preset=preset,
        run={k: v for k, v in checked.items() if k in RUN_KEYS},
        final={k.split(".", 1)[1]: v for k, v in checked.items() if k in FINAL_KEYS},
    )


def _parse_json(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must hold a JSON object, not {type(data).__name__}")
    return data


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, as a package
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(f"{where}: reading TOML needs Python 3.11, or `pip install tomli`") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: is not valid TOML ({exc})") from None


def _flatten(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"train": {"lr": 0.1}, "seed": 1}`` as ``{"train.lr": 0.1, "seed": 1}``; a group given a plain value, or a
    nested table, is an error naming it."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a table ([{key}] with its settings below), not {value!r}")
            for name, inner in value.items():
                out[f"{key}.{name}"] = inner
        else:
            out[key] = value
    return out


def _checked(key: str, value: Any, where: str) -> Any:
    """The value of a known ``key``, of its field's type (an integer given for a float becomes a float)."""
    f = RUN_KEYS.get(key) or FINAL_KEYS.get(key)
    if f is None:
        close = difflib.get_close_matches(key, [*RUN_KEYS, *FINAL_KEYS, *TABLES], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "--print-config shows every key"
        raise ConfigError(f"{where}: unknown key {key}; {hint}")
    kind, optional = f.type.split(" | ")[0], f.type.endswith("| None")
    if value is None and optional:
        return None
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    wanted = {"int": (int, "an integer"), "float": (float, "a number"), "bool": (bool, "true or false"),
              "str": (str, "a string")}[kind]  # fmt: skip
    if not isinstance(value, wanted[0]) or (kind == "int" and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {wanted[1]}, not {_show(value)}")
    choices = tuple(PRESETS) if key == "preset" else f.metadata.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)}, not {value!r}{hint}")
    return value


def _show(value: Any) -> str:
    return f"a table ({', '.join(value)})" if isinstance(value, dict) else repr(value)


# --- writing: a tiny TOML writer for the flat types of the configs -------------------------------------------------


def toml_value(value: Any) -> str:
    """``value`` (str, int, float, bool, or a list of them) as TOML; ValueError for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"no TOML for {type(value).__name__} {value!r}")


def settings_toml(
    cfg: RunConfig | None = None, final: FinalConfig | None = None, *, keys: tuple[str, ...] | None = None
) -> str:
    """The settings as a TOML file that ``read_config_file`` reads back to the same configs: ``cfg``'s run settings
    (only the top-level ``keys`` when given) and its groups, then ``final`` as ``[final]``. A setting that is not
    set (None) is a comment, as TOML has no null."""
    lines: list[str] = []
    if cfg is not None:
        top = [f for f in fields(cfg) if f.name not in GROUPS and (keys is None or f.name in keys)]
        lines += [_line(f.name, getattr(cfg, f.name)) for f in top]
        for group in GROUPS if keys is None else ():
            lines += ["", f"[{group}]"] + [_line(k, v) for k, v in dataclasses.asdict(getattr(cfg, group)).items()]
    if final is not None:
        lines += ["", f"[{FINAL}]"] + [_line(k, v) for k, v in final.to_dict().items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _line(key: str, value: Any) -> str:
    return f"# {key} = (not set)" if value is None else f"{key} = {toml_value(value)}"
