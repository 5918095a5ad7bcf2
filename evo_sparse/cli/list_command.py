"""``list``: every run, study, comparison and fidelity folder under a runs folder, one line each; ``algorithms``:
every search algorithm this installation knows."""

from __future__ import annotations

import json

import click


@click.command("list")
@click.argument("runs_dir", default="runs", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of dicts, one per folder")
def list_runs(runs_dir: str, as_json: bool):
    """List the folders under RUNS_DIR (default: runs): kind, status, progress, best fitness, failures, last change
    and the settings that differ from the preset. A damaged folder is listed with the reason. Never writes."""
    from evo_sparse.runs.listing import format_listing, list_folders

    entries = list_folders(runs_dir)
    if as_json:
        click.echo(json.dumps(entries, indent=1))
    elif entries:
        click.echo(format_listing(entries))
    else:
        click.echo(f"no run, study, comparison or fidelity folders under {runs_dir}", err=True)


@click.command("algorithms")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of dicts, one per algorithm")
def algorithms(as_json: bool):
    """List the search algorithms --algorithm accepts: the built-ins and the plug-ins installed packages declare
    (entry-point group evo_sparse.algorithms), with their kind and options. Any package.module:name works too."""
    from evo_sparse.search.plugins import available

    rows = available()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        options = f" [options: {r['options']}]" if r["options"] else ""
        click.echo(f"{r['name']:<{width}}  {r['kind']:<8}  {r['description']}{options}  ({r['from']})")
    click.echo("also: --algorithm package.module:name (a setup(toolbox) function or an ask/tell class; see README)")
