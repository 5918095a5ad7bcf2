"""``final``, ``paper``, ``compare``, ``fidelity`` and ``plot``: what is built from searches."""

from __future__ import annotations

import click

from evo_sparse.cli.options import (
    _log,
    _split,
    build_config,
    build_final,
    dry_run_option,
    final_options,
    print_dry_run,
    some_run_options,
)
from evo_sparse.cli.settings_file import config_options, print_settings, read_file
from evo_sparse.foundations.config import BACKENDS, SAMPLINGS
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.presets import PRESETS


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="recipe preset (default: the run's)")
@config_options
@final_options(seeds_option="seeds")
@click.option("--no-dense", is_flag=True, help="do not train the dense parent")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="where trainings run (default: the run's)")
@click.option("--workers", type=click.IntRange(0), default=None, help="worker processes, 0 = one per core or GPU")
@click.option("--max-retries", type=click.IntRange(0), default=None, help="retries of a training whose worker died")
@click.option(
    "--tensorboard", default=None, help="folder for TensorBoard event files of each network's curves (default: none)"
)
@dry_run_option
@click.option("--quiet", is_flag=True, help="no progress lines")
def final(
    run_dir: str,
    preset: str | None,
    config: str | None,
    print_config: bool,
    no_dense: bool,
    device: str | None,
    backend: str | None,
    workers: int | None,
    max_retries: int | None,
    tensorboard: str | None,
    dry_run: bool,
    quiet: bool,
    **opts,
):
    """Fully train a finished run's best K masks, K random masks of its sparsity and the dense parent; prints the
    folder of the results last. Trainings run where the run's evaluations ran (--backend, --workers, --max-retries)
    unless told otherwise (--config: its [final] table and where trainings run; the run fixes the rest). Rerunning
    trains only what is missing."""
    from evo_sparse.foundations.progress import StudyProgress
    from evo_sparse.study import final as final_training

    cfg, _ = final_training.load_run(run_dir)
    file = read_file(config)
    fc = build_final(preset or (file.preset if file else None) or cfg.preset, opts, file)
    given = {"device": device, "backend": backend, "workers": workers, "max_retries": max_retries}
    from_file = {k: v for k, v in file.run.items() if k in given} if file else {}
    where = cfg.updated(from_file | {k: v for k, v in given.items() if v is not None}).validate()
    if print_config:
        return print_settings(where, fc, keys=tuple(given))
    jobs = final_training.run_jobs(run_dir, fc, dense=not no_dense)
    if dry_run:
        from evo_sparse.study.estimate import for_final

        return print_dry_run(for_final(jobs, tensorboard=tensorboard), where)
    progress = StudyProgress(_log, enabled=not quiet)
    progress.add(len(jobs), sum(j.work for j in jobs))
    progress.skip_done(jobs)

    def on_done(job, record):
        progress.trained(f"{job.kind} #{job.index} {job.seed_label}", job, record)

    records = final_training.execute(jobs, where=where, on_done=on_done, log=_log, tensorboard=tensorboard)
    from evo_sparse.stats.analysis import analyse, format_analysis

    click.echo(format_analysis(analyse(records)))
    click.echo(str(final_training.final_folder(run_dir, fc)))


@click.command()
@some_run_options("sparsity", "seed")
@click.option("--sparsities", default="0,0.5,0.8,0.9", help="comma-separated node sparsities; 0 = the dense parent")
@click.option("--seeds", type=click.IntRange(1), default=3, help="search seeds per sparsity (0..N-1)")
@final_options
@dry_run_option
@click.option("--quiet", is_flag=True, help="no progress lines")
def paper(
    preset: str | None,
    config: str | None,
    print_config: bool,
    sparsities: str,
    seeds: int,
    dry_run: bool,
    quiet: bool,
    **options,
):
    """The whole study: search, final training, statistics and figures for every sparsity and seed; prints the study
    folder last. Rerunning resumes it, or does nothing when it is finished."""
    from evo_sparse.stats.analysis import format_analysis
    from evo_sparse.study.paper import paper as run_paper
    from evo_sparse.study.paper import parse_list

    run_opts, final_opts = _split(options)
    levels = parse_list(sparsities, "sparsities")
    file = read_file(config)
    cfg = build_config(preset, run_opts, file)
    fc = build_final(cfg.preset, final_opts, file)
    if print_config:
        return print_settings(cfg, fc)
    if dry_run:
        from evo_sparse.study.estimate import for_paper
        from evo_sparse.study.paper import plan

        return print_dry_run(for_paper(*plan(cfg, fc, sparsities=levels, seeds=seeds), fc), cfg)
    folder, result = run_paper(cfg, fc, sparsities=levels, seeds=seeds, log=_log, show_progress=not quiet)
    click.echo(format_analysis(result))
    click.echo(str(folder))


@click.command()
@some_run_options("algorithm", "algo-opt", "budget", "seed")
@click.option(
    "--algorithms",
    default="weedout,ga",
    help="comma-separated algorithms, the first the baseline: built-ins, installed plug-ins or package.module:name, "
    "each with its options as name[key=value,...]",
)
@click.option("--runs", type=click.IntRange(1), default=5, help="independent runs (seeds 0..N-1) per algorithm")
@click.option(
    "--final-train", is_flag=True, help="also fully train each run's best --final-masks masks (default 1) and test them"
)
@final_options
@dry_run_option
@click.option("--quiet", is_flag=True, help="no progress lines")
def compare(
    preset: str | None,
    config: str | None,
    print_config: bool,
    algorithms: str,
    runs: int,
    final_train: bool,
    dry_run: bool,
    quiet: bool,
    **options,
):
    """Search algorithms (GA, a plug-in of yours) against Random Search at an equal budget of trainings, on the same
    seeds: best-so-far curves, the expected best of random masks, paired and unpaired tests; prints the comparison
    folder last."""
    from evo_sparse.study.compare import compare as run_compare
    from evo_sparse.study.compare import format_comparison, parse_algorithms

    names = parse_algorithms(algorithms)
    run_opts, final_opts = _split(options)
    file = read_file(config)
    cfg = build_config(preset, run_opts, file)
    if any(v is not None for v in final_opts.values()) and not final_train:
        raise ConfigError("the full-training options (--epochs, --final-...) need --final-train")
    fc = build_final(cfg.preset, final_opts, file) if final_train else None  # a file's [final] only with it
    if print_config:
        return print_settings(cfg, fc)
    if dry_run:
        from evo_sparse.study.compare import plan
        from evo_sparse.study.estimate import for_compare

        return print_dry_run(for_compare(plan(cfg, algorithms=names, runs=runs)[1], fc), cfg)
    folder, comparison = run_compare(cfg, algorithms=names, runs=runs, final_cfg=fc, log=_log, show_progress=not quiet)
    click.echo(format_comparison(comparison))
    click.echo(str(folder))


@click.command()
@some_run_options(
    "train-images", "lr", "sampling", "replicates", "generations", "pop", "keep", "algorithm", "crossover", "cxpb",
    "mutpb", "swap-prob", "tournament", "max-failed-share", "tensorboard",
)  # fmt: skip
@click.option("--train-images", "budgets", default=None, help="comma-separated budgets (default: the preset's)")
@click.option("--lr", "lrs", default=None, help="comma-separated peak learning rates (default: the preset's)")
@click.option(
    "--sampling", "samplings", default=None, help="comma-separated: layerwise, global (default: the preset's)"
)
@click.option("--masks", type=int, default=24, show_default=True, help="random masks drawn per sampling")
@click.option("--replicates", type=int, default=3, show_default=True, help="trainings of each mask per setting")
@click.option(
    "--reference-epochs",
    type=int,
    default=0,
    show_default=True,
    help="also train every mask once by the preset's final recipe for this many epochs and rank against it; 0 = no",
)
@click.option(
    "--target", type=float, default=0.7, show_default=True, help="reliability the report counts replicates to"
)
@click.option("--quiet", is_flag=True, help="no progress lines")
def fidelity(
    preset: str | None,
    config: str | None,
    print_config: bool,
    budgets: str | None,
    lrs: str | None,
    samplings: str | None,
    masks: int,
    replicates: int,
    reference_epochs: int,
    target: float,
    quiet: bool,
    **options,
):
    """Measure how much of a fitness value is the mask: M masks trained R times at each budget and rate; prints the
    table, then the study folder last. Rerunning trains only what is missing."""
    from evo_sparse.study import fidelity as study
    from evo_sparse.study.paper import parse_list

    cfg = build_config(preset, options, read_file(config))
    if print_config:
        return print_settings(cfg)
    sampling_list = parse_list(samplings, "sampling", str) if samplings else [cfg.search.sampling]
    bad = [s for s in sampling_list if s not in SAMPLINGS]
    if bad:
        raise ConfigError(f"--sampling must list {' or '.join(SAMPLINGS)}, not {bad[0]!r}")
    settings = study.grid(
        sampling_list,
        parse_list(budgets, "train-images", int) if budgets else [cfg.train.train_images],
        parse_list(lrs, "lr") if lrs else [cfg.train.lr],
    )
    plan = study.Plan(cfg, masks, replicates, settings, reference_epochs, target)
    folder, report = study.execute(plan, log=_log, show_progress=not quiet)
    click.echo(study.format_report(report))
    click.echo(str(folder))


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="plots", show_default=True, help="folder for the figures")
def plot(folders: tuple[str, ...], out: str):
    """Draw the figures of study, comparison, run or final-training folders (PNG, PDF and a JSON sidecar each);
    prints each figure, then the output folder last. Never trains."""
    from evo_sparse.study.plots import draw_all, load

    for path in draw_all(load(list(folders)), out):
        click.echo(str(path))
    click.echo(out)
