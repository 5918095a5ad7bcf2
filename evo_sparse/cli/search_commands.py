"""``run``, ``show`` and ``bench``: a search, its summary, and the timing of fitness evaluation."""

from __future__ import annotations

import json

import click

from evo_sparse.cli.options import _log, build_config, dry_run_option, print_dry_run, run_options
from evo_sparse.cli.settings_file import print_settings, read_file
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.presets import PRESETS


@click.command()
@run_options
@dry_run_option
@click.option("--quiet", is_flag=True, help="no progress lines")
def run(preset: str | None, config: str | None, print_config: bool, dry_run: bool, quiet: bool, **options):
    """Search node masks; prints the run folder last. Rerunning resumes it, or does nothing when it is finished."""
    from evo_sparse.runs.run import execute

    file = read_file(config)
    cfg = build_config(preset, options, file)
    if print_config:
        return print_settings(cfg)
    if dry_run:
        from evo_sparse.study.estimate import for_run

        return print_dry_run(for_run(cfg), cfg)
    if preset is None and not (file and file.preset):
        why = "CUDA found" if cfg.preset == "paper" else "no CUDA found; --preset paper is for GPUs"
        _log(f"preset: {cfg.preset} ({why})")
    folder = execute(cfg, log=_log, show_progress=not quiet)
    if not quiet:
        from evo_sparse.runs.run import summarize
        from evo_sparse.stats.measurement import noise_line

        _log(noise_line(summarize(folder)["noise"]))
    click.echo(str(folder))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def show(run_dir: str, as_json: bool):
    """Summarise a run folder: settings, progress, logbook and the best mask."""
    from evo_sparse.runs.report import format_summary
    from evo_sparse.runs.run import summarize

    summary = summarize(run_dir)
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="cpu", help="network and recipe to time")
@click.option("--sparsities", default="0,0.5,0.8,0.9", help="comma-separated node sparsities")
@click.option("--pop", "population", type=click.IntRange(2), default=20, help="population size for path c")
@click.option("--repeats", type=click.IntRange(1), default=3, help="interleaved repeats; medians are reported")
@click.option("--pack", type=click.IntRange(1), default=4, help="networks trained together in the batched c paths")
@click.option("--train-images", type=click.IntRange(1), default=1024, help="training images per fitness")
@click.option("--val-images", type=click.IntRange(1), default=1000, help="validation images per fitness")
@click.option("--data", default=None, help="CIFAR-10 archive or folder (default: found automatically)")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N")
def bench(
    preset: str,
    sparsities: str,
    population: int,
    repeats: int,
    pack: int,
    train_images: int,
    val_images: int,
    data: str | None,
    device: str,
):
    """Time fitness evaluation: masked + DataLoader (a), compacted (b), whole population (c); prints JSON last."""
    from evo_sparse.foundations.devices import resolve_device
    from evo_sparse.study.bench import bench_config, format_table, run_benchmark
    from evo_sparse.training.data import load_splits

    try:
        levels = tuple(float(s) for s in sparsities.split(","))
    except ValueError:
        raise ConfigError(f"--sparsities must be comma-separated numbers like 0,0.5,0.8, not {sparsities!r}") from None
    cfg = build_config(preset, {"data": data} if data else {})
    cfg = bench_config(cfg, train_images, val_images)
    for s in levels:
        cfg.updated({"search.sparsity": s}).validate()
    result = run_benchmark(
        cfg,
        load_splits(cfg, _log),
        sparsities=levels,
        population=population,
        repeats=repeats,
        pack=pack,
        device=str(resolve_device(device)),
        log=_log,
    )
    click.echo(format_table(result))
    click.echo(json.dumps(result))
