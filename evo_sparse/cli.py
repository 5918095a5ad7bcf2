"""The ``evo-sparse`` command: parse, build the config, call one library function.

Every option of ``run`` maps to one config field (``RUN_OPTIONS``); a value not given comes from the preset.
Errors a user can fix print one line, ``evo-sparse: error: ...``, and exit with code 2.
"""

from __future__ import annotations

import json
import sys

import click

from evo_sparse.config import ALGORITHMS, CROSSOVERS, DATASETS, PRESETS, SAMPLINGS, RunConfig, field_help, preset
from evo_sparse.errors import ConfigError, EvoSparseError

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
    "depth": ("model.depth", click.INT),
    "width": ("model.width", click.INT),
    "train-images": ("train.train_images", click.INT),
    "batch-size": ("train.batch_size", click.INT),
    "lr": ("train.lr", click.FLOAT),
    "warmup": ("train.warmup", click.FLOAT),
    "weight-decay": ("train.weight_decay", click.FLOAT),
    "label-smoothing": ("train.label_smoothing", click.FLOAT),
    "val-images": ("train.val_images", click.INT),
    "dataset": ("data.dataset", click.Choice(DATASETS)),
    "data": ("data.path", click.STRING),
    "val-size": ("data.val_size", click.INT),
    "seed": ("seed", click.INT),
    "device": ("device", click.STRING),
    "runs-dir": ("runs_dir", click.STRING),
    "workers": ("workers", click.INT),
}


class OneLineErrors(click.Group):
    """A group whose usage and library errors print one line and exit 2 (Ctrl-C: a line and exit 130)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message())
        except EvoSparseError as exc:
            _fail(str(exc))
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo(
                "evo-sparse: interrupted; finished evaluations are saved, run the same command to resume", err=True
            )
            sys.exit(130)


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
    return cfg.validate()


def run_options(fn):
    for name, (key, kind) in reversed(RUN_OPTIONS.items()):
        fn = click.option(f"--{name}", type=kind, default=None, help=field_help(key))(fn)
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
    from evo_sparse.runs import execute

    cfg = build_config(preset, options)
    if preset is None:
        why = "CUDA found" if cfg.preset == "paper" else "no CUDA found; --preset paper is for GPUs"
        _log(f"preset: {cfg.preset} ({why})")
    folder = execute(cfg, log=_log, show_progress=not quiet)
    click.echo(str(folder))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def show(run_dir: str, as_json: bool):
    """Summarise a run folder: settings, progress, logbook and the best mask."""
    from evo_sparse.report import format_summary
    from evo_sparse.runs import summarize

    summary = summarize(run_dir)
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))


@cli.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="cpu", help="network and recipe to time")
@click.option("--sparsities", default="0,0.5,0.8,0.9", help="comma-separated node sparsities")
@click.option("--pop", "population", type=click.IntRange(2), default=20, help="population size for path c")
@click.option("--repeats", type=click.IntRange(1), default=3, help="interleaved repeats; medians are reported")
@click.option("--train-images", type=click.IntRange(1), default=1024, help="training images per fitness")
@click.option("--val-images", type=click.IntRange(1), default=1000, help="validation images per fitness")
@click.option("--data", default=None, help="CIFAR-10 archive or folder (default: found automatically)")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N")
def bench(
    preset: str,
    sparsities: str,
    population: int,
    repeats: int,
    train_images: int,
    val_images: int,
    data: str | None,
    device: str,
):
    """Time fitness evaluation: masked + DataLoader (a), compacted (b), whole population (c); prints JSON last."""
    from evo_sparse.bench import bench_config, format_table, run_benchmark
    from evo_sparse.fitness import resolve_device
    from evo_sparse.runs import load_splits

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
        device=str(resolve_device(device)),
        log=_log,
    )
    click.echo(format_table(result))
    click.echo(json.dumps(result))


main = cli
