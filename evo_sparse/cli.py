"""The ``evo-sparse`` command: parse, build the config, call one library function.

Every option of ``run`` maps to one config field (``RUN_OPTIONS``); a value not given comes from the preset.
Errors a user can fix print one line, ``evo-sparse: error: ...``, and exit with code 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import click

from evo_sparse.foundations.config import (
    ALGORITHMS,
    BACKENDS,
    CROSSOVERS,
    DATASETS,
    PRESETS,
    SAMPLINGS,
    RunConfig,
    field_help,
    preset,
)
from evo_sparse.foundations.errors import ConfigError, EvoSparseError, Terminated
from evo_sparse.models.registry import architecture

# option name -> (config key, click type)
RUN_OPTIONS: dict[str, tuple[str, click.ParamType]] = {
    "generations": ("search.generations", click.INT),
    "pop": ("search.population", click.INT),
    "keep": ("search.keep", click.INT),
    "sparsity": ("search.sparsity", click.FLOAT),
    "algorithm": ("search.algorithm", click.Choice(ALGORITHMS)),
    "sampling": ("search.sampling", click.Choice(SAMPLINGS)),
    "crossover": ("search.crossover", click.Choice(CROSSOVERS)),
    "cxpb": ("search.cxpb", click.FLOAT),
    "mutpb": ("search.mutpb", click.FLOAT),
    "swap-prob": ("search.swap_prob", click.FLOAT),
    "tournament": ("search.tournament", click.INT),
    "max-failed-share": ("search.max_failed_share", click.FLOAT),
    "model": ("model.name", click.STRING),
    "depth": ("model.depth", click.INT),
    "width": ("model.width", click.INT),
    "train-images": ("train.train_images", click.INT),
    "replicates": ("train.replicates", click.INT),
    "batch-size": ("train.batch_size", click.INT),
    "lr": ("train.lr", click.FLOAT),
    "warmup": ("train.warmup", click.FLOAT),
    "weight-decay": ("train.weight_decay", click.FLOAT),
    "label-smoothing": ("train.label_smoothing", click.FLOAT),
    "val-images": ("train.val_images", click.INT),
    "pack": ("train.pack", click.INT),
    "compile": ("train.compile", click.BOOL),
    "dataset": ("data.dataset", click.Choice(DATASETS)),
    "data": ("data.path", click.STRING),
    "val-size": ("data.val_size", click.INT),
    "seed": ("seed", click.INT),
    "device": ("device", click.STRING),
    "runs-dir": ("runs_dir", click.STRING),
    "backend": ("backend", click.Choice(BACKENDS)),
    "workers": ("workers", click.INT),
    "address": ("address", click.STRING),
    "gpus-per-task": ("gpus_per_task", click.FLOAT),
    "max-retries": ("max_retries", click.INT),
    "eval-timeout": ("eval_timeout", click.FLOAT),
}


class OneLineErrors(click.Group):
    """A group whose usage and library errors print one line and exit 2 (Ctrl-C: a line and exit 130; SIGTERM, as
    Slurm, Kubernetes or ``timeout`` stop a job: the same, exit 143; a second SIGTERM stops at once)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:  # not the main thread (an embedding program): its own signal handling stays
            previous = None
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message())
        except EvoSparseError as exc:
            _fail(str(exc))
        except (KeyboardInterrupt, click.exceptions.Abort) as exc:  # click turns KeyboardInterrupt into Abort
            if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
                what, code = "terminated (SIGTERM)", 128 + signal.SIGTERM
            else:
                what, code = "interrupted", 130
            click.echo(f"evo-sparse: {what}; finished evaluations are saved, run the same command to resume", err=True)
            sys.exit(code)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    """The first SIGTERM unwinds like Ctrl-C (workers stopped, files closed); a second one ends the process at once."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
    raise Terminated()


def _fail(message: str) -> None:
    click.echo(f"evo-sparse: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def _log(message: str) -> None:
    click.echo(message, err=True)


def default_preset() -> str:
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def build_config(preset_name: str | None, options: dict) -> RunConfig:
    """The preset's config with every given option applied, validated."""
    name = preset_name or default_preset()
    cfg = preset(name)
    given = {RUN_OPTIONS[k.replace("_", "-")][0]: v for k, v in options.items() if v is not None}
    if given.get("data.path") and (given.get("data.dataset") or cfg.data.dataset) == "synthetic":
        raise ConfigError(f"--data has no effect with synthetic data (preset {name}); add --dataset cifar10 or drop it")
    try:
        cfg = cfg.updated(given)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    architecture(cfg.model)  # the model checks its own depth and width
    return cfg.validate()


def _run_option(name: str, key: str, kind: click.ParamType):
    """One of RUN_OPTIONS as a click option (a flag for a boolean); None when not given, so the preset's value holds."""
    if kind is click.BOOL:
        return click.option(f"--{name}", is_flag=True, default=None, help=field_help(key))
    return click.option(f"--{name}", type=kind, default=None, help=field_help(key))


def run_options(fn):
    for name, (key, kind) in reversed(RUN_OPTIONS.items()):
        fn = _run_option(name, key, kind)(fn)
    return click.option(
        "--preset",
        type=click.Choice(list(PRESETS)),
        default=None,
        help="named settings (default: paper with CUDA, else cpu); options given override them",
    )(fn)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="evo-sparse")
def cli():
    """Random Search (Weedout) and GA over node masks of a Wide ResNet, scored on CIFAR-10."""


@cli.command()
@run_options
@click.option("--quiet", is_flag=True, help="no progress lines")
def run(preset: str | None, quiet: bool, **options):
    """Search node masks; prints the run folder last. Rerunning resumes it, or does nothing when it is finished."""
    from evo_sparse.runs.run import execute

    cfg = build_config(preset, options)
    if preset is None:
        why = "CUDA found" if cfg.preset == "paper" else "no CUDA found; --preset paper is for GPUs"
        _log(f"preset: {cfg.preset} ({why})")
    folder = execute(cfg, log=_log, show_progress=not quiet)
    if not quiet:
        from evo_sparse.runs.run import summarize
        from evo_sparse.stats.measurement import noise_line

        _log(noise_line(summarize(folder)["noise"]))
    click.echo(str(folder))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def show(run_dir: str, as_json: bool):
    """Summarise a run folder: settings, progress, logbook and the best mask."""
    from evo_sparse.runs.report import format_summary
    from evo_sparse.runs.run import summarize

    summary = summarize(run_dir)
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))


@cli.command()
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


# --- the paper experiment: final training, the whole study, GA vs Random Search, figures ------------------------------

# option name -> FinalConfig field (the full-training recipe; a value not given comes from the preset)
FINAL_OPTIONS: dict[str, str] = {
    "epochs": "epochs",
    "final-batch-size": "batch_size",
    "final-lr": "lr",
    "schedule": "schedule",
    "gamma": "gamma",
    "final-warmup": "warmup",
    "final-weight-decay": "weight_decay",
    "final-label-smoothing": "label_smoothing",
    "final-masks": "masks",
    "final-seeds": "seeds",
}


def final_options(fn=None, *, seeds_option: str = "final-seeds"):
    """The FINAL_OPTIONS as click options (``--final-seeds`` spelled ``seeds_option``)."""
    from dataclasses import fields

    if fn is None:
        return lambda f: final_options(f, seeds_option=seeds_option)

    from evo_sparse.foundations.config import FinalConfig, final_field_help

    kinds = {f.name: f for f in fields(FinalConfig)}
    for name, key in reversed(FINAL_OPTIONS.items()):
        f = kinds[key]
        choices = f.metadata["choices"]
        kind = click.Choice(choices) if choices else (click.INT if f.type == "int" else click.FLOAT)
        spelled = seeds_option if name == "final-seeds" else name
        help_text = final_field_help(key)
        fn = click.option(f"--{spelled}", name.replace("-", "_"), type=kind, default=None, help=help_text)(fn)
    return fn


def build_final(preset_name: str, options: dict):
    """The preset's full-training recipe with every given FINAL_OPTIONS value applied, validated."""
    from evo_sparse.foundations.config import final_preset

    given = {FINAL_OPTIONS[k.replace("_", "-")]: v for k, v in options.items() if v is not None}
    return final_preset(preset_name).updated(given).validate()


def some_run_options(*excluded: str):
    """``run``'s options (and ``--preset``) except ``excluded``, for commands that set those themselves."""

    def decorate(fn):
        for name, (key, kind) in reversed(RUN_OPTIONS.items()):
            if name not in excluded:
                fn = _run_option(name, key, kind)(fn)
        help_text = "named settings (default: paper with CUDA, else cpu)"
        return click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help=help_text)(fn)

    return decorate


def _split(options: dict) -> tuple[dict, dict]:
    run = {k: v for k, v in options.items() if k.replace("_", "-") in RUN_OPTIONS}
    return run, {k: v for k, v in options.items() if k not in run}


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="recipe preset (default: the run's)")
@final_options(seeds_option="seeds")
@click.option("--no-dense", is_flag=True, help="do not train the dense parent")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
@click.option("--workers", type=click.IntRange(0), default=None, help="CPU worker processes (0 = one per core)")
@click.option("--quiet", is_flag=True, help="no progress lines")
def final(
    run_dir: str, preset: str | None, no_dense: bool, device: str | None, workers: int | None, quiet: bool, **opts
):
    """Fully train a finished run's best K masks, K random masks of its sparsity and the dense parent; prints the
    folder of the results last. Rerunning trains only what is missing."""
    from evo_sparse.study import final as final_training
    from evo_sparse.study.paper import StudyProgress

    cfg, _ = final_training.load_run(run_dir)
    fc = build_final(preset or cfg.preset, opts)
    jobs = final_training.run_jobs(run_dir, fc, dense=not no_dense)
    progress = StudyProgress(_log, enabled=not quiet)
    progress.add(len(jobs), sum(j.work for j in jobs))
    progress.skip_done(jobs)

    def on_done(job, record):
        progress.trained(f"{job.kind} #{job.index} {job.seed_label}", job, record)

    records = final_training.execute(
        jobs, device=device or cfg.device, workers=cfg.workers if workers is None else workers, on_done=on_done
    )
    from evo_sparse.stats.analysis import analyse, format_analysis

    click.echo(format_analysis(analyse(records)))
    click.echo(str(final_training.final_folder(run_dir, fc)))


@cli.command()
@some_run_options("sparsity", "seed")
@click.option("--sparsities", default="0,0.5,0.8,0.9", help="comma-separated node sparsities; 0 = the dense parent")
@click.option("--seeds", type=click.IntRange(1), default=3, help="search seeds per sparsity (0..N-1)")
@final_options
@click.option("--quiet", is_flag=True, help="no progress lines")
def paper(preset: str | None, sparsities: str, seeds: int, quiet: bool, **options):
    """The whole study: search, final training, statistics and figures for every sparsity and seed; prints the study
    folder last. Rerunning resumes it, or does nothing when it is finished."""
    from evo_sparse.stats.analysis import format_analysis
    from evo_sparse.study.paper import paper as run_paper
    from evo_sparse.study.paper import parse_list

    run_opts, final_opts = _split(options)
    levels = parse_list(sparsities, "sparsities")
    cfg = build_config(preset, run_opts)
    folder, result = run_paper(
        cfg, build_final(cfg.preset, final_opts), sparsities=levels, seeds=seeds, log=_log, show_progress=not quiet
    )
    click.echo(format_analysis(result))
    click.echo(str(folder))


@cli.command()
@some_run_options("algorithm", "seed")
@click.option("--algorithms", default="weedout,ga", help="comma-separated algorithms; the first is the baseline")
@click.option("--runs", type=click.IntRange(1), default=5, help="independent runs (seeds 0..N-1) per algorithm")
@click.option(
    "--final-train", is_flag=True, help="also fully train each run's best --final-masks masks (default 1) and test them"
)
@final_options
@click.option("--quiet", is_flag=True, help="no progress lines")
def compare(preset: str | None, algorithms: str, runs: int, final_train: bool, quiet: bool, **options):
    """GA vs Random Search at an equal budget of fitness evaluations: best-so-far curves and tests; prints the
    comparison folder last."""
    from evo_sparse.study.paper import compare as run_compare
    from evo_sparse.study.paper import format_comparison, parse_list

    names = parse_list(algorithms, "algorithms", str)
    run_opts, final_opts = _split(options)
    cfg = build_config(preset, run_opts)
    if any(v is not None for v in final_opts.values()) and not final_train:
        raise ConfigError("the full-training options (--epochs, --final-...) need --final-train")
    fc = build_final(cfg.preset, final_opts) if final_train else None
    folder, comparison = run_compare(cfg, algorithms=names, runs=runs, final_cfg=fc, log=_log, show_progress=not quiet)
    click.echo(format_comparison(comparison))
    click.echo(str(folder))


@cli.command()
@some_run_options(
    "train-images", "lr", "sampling", "replicates", "generations", "pop", "keep", "algorithm", "crossover", "cxpb",
    "mutpb", "swap-prob", "tournament", "max-failed-share",
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

    cfg = build_config(preset, options)
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


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="plots", show_default=True, help="folder for the figures")
def plot(folders: tuple[str, ...], out: str):
    """Draw the figures of study, comparison, run or final-training folders (PNG, PDF and a JSON sidecar each);
    prints each figure, then the output folder last. Never trains."""
    from evo_sparse.study.plots import draw_all, load

    for path in draw_all(load(list(folders)), out):
        click.echo(str(path))
    click.echo(out)


main = cli
