"""The ``evo-sparse`` command: parse, build the config, call one library function (one module of commands per
kind of work; ``options`` holds what they share)."""

from __future__ import annotations

import click

from evo_sparse.cli.list_command import algorithms, list_runs
from evo_sparse.cli.options import FINAL_OPTIONS, RUN_OPTIONS, OneLineErrors, build_config
from evo_sparse.cli.search_commands import bench, run, show
from evo_sparse.cli.study_commands import compare, fidelity, final, paper, plot

__all__ = ["FINAL_OPTIONS", "RUN_OPTIONS", "build_config", "cli", "main"]


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="evo-sparse")
def cli():
    """Random Search (Weedout) and GA over node masks of a network (a Wide ResNet by default), scored on CIFAR-10."""


for command in (run, show, bench, final, paper, compare, fidelity, plot, list_runs, algorithms):
    cli.add_command(command)

main = cli
