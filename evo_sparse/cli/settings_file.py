"""``--config FILE`` and ``--print-config``: settings from a TOML file or a folder's config.json, and the resolved
settings printed as TOML. What wins: the preset, then the file, then the options given on the command line."""

from __future__ import annotations

import click

from evo_sparse.foundations.config import FinalConfig, RunConfig
from evo_sparse.foundations.config_files import ConfigFile, read_config_file, settings_toml

CONFIG_HELP = (
    "settings from a TOML file (run settings at the top; [data], [model], [train], [search] and [final] tables) or a "
    "run folder's config.json; options given override it, and it overrides the preset"
)
PRINT_HELP = "print the settings the command would use, as TOML (a file for --config), and exit without running"


def config_options(fn):
    """``--config FILE`` and ``--print-config``, passed to the command as ``config`` and ``print_config``."""
    fn = click.option("--print-config", is_flag=True, help=PRINT_HELP)(fn)
    return click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None, help=CONFIG_HELP)(fn)


def read_file(path: str | None) -> ConfigFile | None:
    """The checked ``--config`` file, None without one; ConfigError of one line for a bad one."""
    return read_config_file(path) if path else None


def print_settings(
    cfg: RunConfig | None, final: FinalConfig | None = None, *, keys: tuple[str, ...] | None = None
) -> None:
    """``--print-config``: the settings as TOML on stdout (``settings_toml``)."""
    click.echo(settings_toml(cfg, final, keys=keys), nl=False)
