"""What every command shares: the options of ``run`` (``RUN_OPTIONS``) and of final training (``FINAL_OPTIONS``),
building a config from a preset and the options given, and errors (and SIGTERM) as one line.

Every option of ``run`` maps to one config field; a value not given comes from the preset. Errors a user can fix print
one line, ``evo-sparse: error: ...``, and exit with code 2.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from evo_sparse.cli.settings_file import config_options
from evo_sparse.foundations.config import BACKENDS, CROSSOVERS, DATASETS, SAMPLINGS, RunConfig, field_help
from evo_sparse.foundations.config_files import ConfigFile
from evo_sparse.foundations.errors import ConfigError, EvoSparseError, Terminated
from evo_sparse.foundations.presets import PRESETS, preset
from evo_sparse.models.registry import architecture

# option name -> (config key, click type)
RUN_OPTIONS: dict[str, tuple[str, click.ParamType]] = {
    "generations": ("search.generations", click.INT),
    "pop": ("search.population", click.INT),
    "keep": ("search.keep", click.INT),
    "sparsity": ("search.sparsity", click.FLOAT),
    "algorithm": ("search.algorithm", click.STRING),
    "algo-opt": ("search.algo_opts", click.STRING),
    "budget": ("search.budget", click.FLOAT),
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
    "tensorboard": ("tensorboard", click.STRING),
}


class OneLineErrors(click.Group):
    """A group whose usage and library errors print one line and exit 2 (Ctrl-C: a line and exit 130; SIGTERM, as
    Slurm, Kubernetes or ``timeout`` stop a job: the same, exit 143; a second SIGTERM stops at once)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        global _STOPPED_BY_SIGTERM
        _STOPPED_BY_SIGTERM = False
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
            if _STOPPED_BY_SIGTERM or isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
                what, code = "terminated (SIGTERM)", 128 + signal.SIGTERM
            else:
                what, code = "interrupted", 130
            click.echo(f"evo-sparse: {what}; finished evaluations are saved, run the same command to resume", err=True)
            sys.exit(code)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


_STOPPED_BY_SIGTERM = False  # set by the handler: a library may catch the Terminated and raise its own interrupt (Ray)


def _terminate(signum, frame) -> None:
    """The first SIGTERM unwinds like Ctrl-C (workers stopped, files closed); a second one ends the process at once."""
    global _STOPPED_BY_SIGTERM
    _STOPPED_BY_SIGTERM = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
    raise Terminated()


def _fail(message: str) -> None:
    click.echo(f"evo-sparse: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def _log(message: str) -> None:
    click.echo(message, err=True)


dry_run_option = click.option(
    "--dry-run",
    is_flag=True,
    help="print the trainings, training images, estimated time on this device and disk use; train and write nothing",
)


def print_dry_run(estimate, where) -> None:
    """``--dry-run``: the ``study.estimate`` of a command, timed on ``where``'s device and backend."""
    from evo_sparse.study.estimate import report

    click.echo(report(estimate, where, log=_log))


def default_preset() -> str:
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def build_config(preset_name: str | None, options: dict, file: ConfigFile | None = None) -> RunConfig:
    """The preset's config, then the settings of ``file`` (``--config``), then every option given; validated. The
    preset is ``--preset``, else the file's, else the default."""
    name = preset_name or (file.preset if file else None) or default_preset()
    cfg = preset(name)
    if file is not None:
        cfg = file.run_config(cfg)
    options = {k: (",".join(v) or None) if isinstance(v, tuple) else v for k, v in options.items()}
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
    if key == "search.algo_opts":  # repeatable: --algo-opt eta=3 --algo-opt rungs=2
        return click.option(f"--{name}", multiple=True, default=None, help=field_help(key) + "; may be repeated")
    return click.option(f"--{name}", type=kind, default=None, help=field_help(key))


def run_options(fn):
    """``--preset``, ``--config``, ``--print-config`` and RUN_OPTIONS as click options."""
    for name, (key, kind) in reversed(RUN_OPTIONS.items()):
        fn = _run_option(name, key, kind)(fn)
    fn = config_options(fn)
    return click.option(
        "--preset",
        type=click.Choice(list(PRESETS)),
        default=None,
        help="named settings (default: paper with CUDA, else cpu); options given override them",
    )(fn)


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


def build_final(preset_name: str, options: dict, file: ConfigFile | None = None):
    """The preset's full-training recipe, then the ``[final]`` table of ``file``, then every given FINAL_OPTIONS
    value; validated."""
    from evo_sparse.foundations.presets import final_preset

    given = {FINAL_OPTIONS[k.replace("_", "-")]: v for k, v in options.items() if v is not None}
    recipe = final_preset(preset_name)
    if file is not None:
        recipe = file.final_config(recipe)
    return recipe.updated(given).validate()


def some_run_options(*excluded: str):
    """``run``'s options (and ``--preset``, ``--config``, ``--print-config``) except ``excluded``, for commands that
    set those themselves."""

    def decorate(fn):
        for name, (key, kind) in reversed(RUN_OPTIONS.items()):
            if name not in excluded:
                fn = _run_option(name, key, kind)(fn)
        fn = config_options(fn)
        help_text = "named settings (default: paper with CUDA, else cpu)"
        return click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help=help_text)(fn)

    return decorate


def _split(options: dict) -> tuple[dict, dict]:
    run = {k: v for k, v in options.items() if k.replace("_", "-") in RUN_OPTIONS}
    return run, {k: v for k, v in options.items() if k not in run}
