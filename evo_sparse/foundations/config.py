"""Typed, frozen run configuration: five groups that round-trip to JSON exactly, and the named presets.

Each field carries its help text (``metadata["help"]``) so the CLI, the README and the saved config agree.
Fields marked ``hash=False`` (paths, device) say where a run happens, not what it computes, and stay out of
the run folder's hash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.paths import short_hash

ALGORITHMS = ("weedout", "ga")  # the built-ins; ``search.plugins`` resolves any other name
SAMPLINGS = ("layerwise", "global")
CROSSOVERS = ("unit", "uniform")
DATASETS = ("cifar10", "synthetic")
BACKENDS = ("auto", "local", "process", "ray")


def _f(default, help: str, *, hash: bool = True, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "hash": hash, "choices": choices})


@dataclass(frozen=True)
class DataConfig:
    """Which images train and score the networks."""

    dataset: str = _f("cifar10", "cifar10 (real data) or synthetic (seeded toy data for tests)", choices=DATASETS)
    path: str | None = _f(None, "CIFAR-10 archive or folder; default: EVO_SPARSE_DATA, then known places", hash=False)
    val_size: int = _f(5000, "training images held out for validation (fitness); stratified")
    split_seed: int = _f(0, "seed of the train/validation split, fixed so runs share one split")
    synthetic_train: int = _f(1024, "synthetic data only: training images")


@dataclass(frozen=True)
class ModelConfig:
    """The parent network: a registered model (``models.registry``) at a depth and width."""

    name: str = _f(
        "wrn",
        "network searched: wrn (Wide ResNet), resnet (CIFAR ResNet of He et al.), vgg (VGG with BatchNorm), a name "
        "registered from Python, or package.module:factory",
    )
    depth: int = _f(16, "depth: wrn 6n+4 (10, 16, 22, ...); resnet 6n+2 (20, 32, 56, ...); vgg 11, 13, 16 or 19")
    width: int = _f(2, "width factor k: wrn and resnet stages have 16k, 32k, 64k channels; vgg 64k..512k")


@dataclass(frozen=True)
class TrainConfig:
    """The brief training that scores one mask (its fidelity)."""

    train_images: int = _f(4096, "training images seen per fitness evaluation (the budget)")
    replicates: int = _f(
        1,
        "trainings averaged per fitness, each a replicate with its own data order and augmentation (the parent "
        "weights and the mask stay); the spread between them is the fitness noise the run reports",
    )
    batch_size: int = _f(64, "minibatch size")
    lr: float = _f(0.2, "peak learning rate of the one-cycle schedule (linear up, linear down)")
    warmup: float = _f(0.25, "fraction of the steps spent warming the learning rate up")
    momentum: float = _f(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = _f(5e-4, "L2 weight decay, as in the WRN paper")
    label_smoothing: float = _f(0.1, "label smoothing; steadies very short trainings")
    val_images: int = _f(0, "validation images used for fitness; 0 = all of the validation split")
    eval_batch_size: int = _f(500, "batch size when measuring validation accuracy")
    compile: bool = _f(
        False,
        "CUDA only: torch.compile each network's training step (compiles once per network shape; fused kernels round "
        "differently, so it is part of what a fitness value is)",
    )
    pack: int = _f(
        1,
        "individuals trained together as one batched network (grouped convolutions), 1 = one at a time; layerwise "
        "sampling only (global masks differ in widths and train one at a time). Part of what a fitness value is: "
        "the batched kernels round differently",
    )


@dataclass(frozen=True)
class SearchConfig:
    """The generational loop: Weedout (Random Search) or a GA over node masks."""

    algorithm: str = _f(
        "weedout",
        "weedout (random restarts = Random Search), ga, an installed plug-in's name (evo-sparse algorithms lists "
        "them) or package.module:name",
    )
    algo_opts: str = _f(
        "", "the algorithm's own settings as key=value pairs, comma-separated; checked by the algorithm"
    )
    algorithm_source: str = _f(
        "",
        "set by evo-sparse, not an option: a plug-in's version and source fingerprint, so that a changed plug-in "
        "never resumes a run of the old one",
    )
    budget: float = _f(
        0.0,
        "trainings a run may spend (a brief training of --train-images counts 1, a shorter one its share, a mask "
        "already evaluated in the run 0); 0 = the generations decide (ask/tell plug-ins: P + (G-1)(P-K), Weedout's)",
    )
    population: int = _f(20, "population size P")
    keep: int = _f(0, "best individuals kept each generation K; 0 = P/2")
    generations: int = _f(10, "generations, counting the initial random one")
    sparsity: float = _f(0.8, "fraction of maskable nodes (channels) removed, in [0, 1)")
    sampling: str = _f(
        "layerwise", "layerwise: every unit keeps round((1-s)C); global: one count overall", choices=SAMPLINGS
    )
    crossover: str = _f("unit", "ga only: unit (swap whole units) or uniform (then repaired)", choices=CROSSOVERS)
    cxpb: float = _f(0.5, "ga only: probability that a pair of offspring is crossed")
    mutpb: float = _f(0.3, "ga only: probability that an offspring is mutated")
    swap_prob: float = _f(
        0.1,
        "ga only: mutation strength: per-unit probability of a keep/drop swap; a mutation always makes at least one",
    )
    tournament: int = _f(3, "ga only: tournament size for choosing parents")
    max_failed_share: float = _f(
        0.5, "stop (resumably) once more than this share of all evaluations failed; 1 = never stop", hash=False
    )

    @property
    def survivors(self) -> int:
        """K, the number kept each generation (P/2 when ``keep`` is 0)."""
        return self.keep or self.population // 2

    @property
    def trainings(self) -> float:
        """The trainings a run plans: its ``budget``, else Weedout's P + (G-1)(P-K) (for a GA, an upper bound)."""
        return self.budget or self.weedout_trainings

    @property
    def weedout_trainings(self) -> int:
        """P + (G-1)(P-K): the trainings Weedout spends in ``generations`` (the equal budget of a comparison)."""
        return self.population + (self.generations - 1) * (self.population - self.survivors)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run computes from, plus where it runs."""

    preset: str = _f("cpu", "named settings: smoke, cpu or paper (see README)")
    seed: int = _f(0, "seed of the parent initialization, data order and search; a folder level")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N", hash=False)
    runs_dir: str = _f("runs", "folder that holds the run folders", hash=False)
    backend: str = _f(
        "auto",
        "where evaluations run: local (this process), process (worker processes), ray (a Ray cluster); auto: process "
        "on a multi-core CPU or several GPUs, else local",
        hash=False,
        choices=BACKENDS,
    )
    workers: int = _f(
        0,
        "process: worker processes (0 = one per core on the CPU, one per GPU on CUDA; auto: 1 = this process); "
        "ray: evaluations in flight (0 = as many as the cluster runs at once)",
        hash=False,
    )
    address: str | None = _f(
        None,
        "ray: a running cluster (host:port from ray start --head, or auto); default: $RAY_ADDRESS, else a local one",
        hash=False,
    )
    gpus_per_task: float = _f(1.0, "ray: GPUs one evaluation reserves on a GPU cluster, in (0, 1]", hash=False)
    max_retries: int = _f(
        2, "process, ray: times an evaluation whose worker died (killed, node lost) is retried elsewhere", hash=False
    )
    eval_timeout: float = _f(
        0.0,
        "process: seconds an evaluation may run before its worker is taken for hung, killed and the evaluation "
        "retried (--max-retries); 0 = ten times the slowest evaluation so far, at least 60 s (none before the first)",
        hash=False,
    )
    tensorboard: str | None = _f(
        None,
        "folder for TensorBoard event files (the tensorboard extra): per evaluation, per generation, the settings with "
        "the best fitness, and final training's curves, each run under its run folder's name; none = off",
        hash=False,
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Rebuild from ``to_dict``; unknown keys are an error, missing ones take their defaults. A top-level
        ``schema`` (the version of the file config.json, checked by ``runs.read_config``) is ignored."""
        if isinstance(d, dict) and "schema" in d:
            d = {k: v for k, v in d.items() if k != "schema"}
        return _build(cls, d, "")

    def hashed_items(self) -> dict[str, Any]:
        """Settings that differ from the defaults and change what is computed: ``{"search.sparsity": 0.5, ...}``."""
        return {k: v for k, v in flat_items(self).items() if k in _HASHED and v != flat_items(RunConfig())[k]}

    def computed_items(self) -> dict[str, Any]:
        """Every setting that changes what is computed (the hashed ones), defaults included."""
        return {k: v for k, v in flat_items(self).items() if k in _HASHED}

    def run_hash(self) -> str:
        return short_hash(self.hashed_items())

    def updated(self, flat: dict[str, Any]) -> RunConfig:
        """A copy with ``{"group.field": value}`` (or top-level ``{"seed": 1}``) settings replaced."""
        groups: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in flat.items():
            if key in _FIELDS:
                value = _coerce(_FIELDS[key], value)
            if "." in key:
                group, name = key.split(".", 1)
                groups.setdefault(group, {})[name] = value
            else:
                top[key] = value
        for group, changes in groups.items():
            top[group] = replace(getattr(self, group), **changes)
        return replace(self, **top)

    def validate(self) -> RunConfig:
        """Raise ConfigError naming the first bad setting and what to use instead; return self."""
        from evo_sparse.foundations.validation import check_run

        check_run(self)
        return self


def pack_size(cfg: RunConfig) -> int:
    """Individuals trained together (``--pack``): equal widths only, so global sampling trains one at a time."""
    return cfg.train.pack if cfg.search.sampling == "layerwise" else 1


def flat_items(cfg: RunConfig) -> dict[str, Any]:
    """``{"seed": 0, "search.sparsity": 0.8, ...}``: every setting under its dotted name."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{g.name}": getattr(value, g.name) for g in fields(value)})
        else:
            out[f.name] = value
    return out


def _all_fields() -> dict[str, dataclasses.Field]:
    out: dict[str, dataclasses.Field] = {}
    for f in fields(RunConfig):
        if f.name in GROUPS:
            out.update({f"{f.name}.{g.name}": g for g in fields(GROUPS[f.name])})
        else:
            out[f.name] = f
    return out


def _build(cls, d: dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config{where} must be a JSON object, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(where + '.' + k for k in unknown).lstrip('.')}")
    kwargs = {k: _build(GROUPS[k], v, f"{where}.{k}") if k in GROUPS else _coerce(known[k], v) for k, v in d.items()}
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """An int given for a float setting becomes a float, so equal configs hash equally."""
    if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


GROUPS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "search": SearchConfig}
_FIELDS = _all_fields()


def run_fields() -> dict[str, dataclasses.Field]:
    """Every flattened RunConfig field by key (``"seed"``, ``"search.sparsity"``, ...)."""
    return dict(_FIELDS)


_HASHED = {k for k, f in _FIELDS.items() if f.metadata.get("hash", True)}


def field_help(key: str) -> str:
    """Help text of a flattened field such as ``"search.sparsity"``."""
    return _FIELDS[key].metadata["help"]


# --- final training: a config of its own, so adding it renamed no run folder ------------------------------------------

SCHEDULES = ("step", "cosine", "onecycle")
STEP_MILESTONES = (0.3, 0.6, 0.8)  # fractions of the epochs: 60/120/160 of 200, the WRN paper's steps


@dataclass(frozen=True)
class FinalConfig:
    """The full training of found, random and dense networks (their final accuracy). The defaults are the WRN paper's
    recipe; ``masks`` and ``seeds`` say how many networks to train, not what each computes, so they stay out of the
    hash of the results folder (``final_<hash>``)."""

    epochs: int = _f(200, "epochs of full training over the training split")
    batch_size: int = _f(128, "minibatch size of full training (a last partial batch is dropped each epoch)")
    lr: float = _f(0.1, "peak learning rate of full training")
    schedule: str = _f(
        "step", "step: x gamma at 30/60/80% of the epochs; cosine; onecycle: linear up, linear down", choices=SCHEDULES
    )
    gamma: float = _f(0.2, "step schedule: learning-rate factor at each milestone")
    warmup: float = _f(0.0, "fraction of the steps warming the learning rate up linearly")
    momentum: float = _f(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = _f(5e-4, "L2 weight decay of full training")
    label_smoothing: float = _f(0.0, "label smoothing of full training")
    eval_batch_size: int = _f(500, "batch size when measuring validation and test accuracy")
    masks: int = _f(0, "found masks (and as many random) fully trained per run, K; 0 = the run's --keep", hash=False)
    seeds: int = _f(2, "training seeds per network (they vary the data order; masks and weights stay)", hash=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinalConfig:
        return _build(cls, d, ".final")

    def updated(self, changes: dict[str, Any]) -> FinalConfig:
        """A copy with ``{"epochs": 2, ...}`` replaced; ConfigError for an unknown name."""
        try:
            return FinalConfig.from_dict(self.to_dict() | changes)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None

    def hashed_items(self) -> dict[str, Any]:
        default = FinalConfig().to_dict()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.metadata["hash"] and getattr(self, f.name) != default[f.name]
        }

    def final_hash(self) -> str:
        return short_hash(self.hashed_items())

    def validate(self) -> FinalConfig:
        """Raise ConfigError naming the first bad setting; return self."""
        from evo_sparse.foundations.validation import check_final

        check_final(self)
        return self


def final_field_help(name: str) -> str:
    return next(f.metadata["help"] for f in fields(FinalConfig) if f.name == name)


def train_split_size(cfg: RunConfig) -> int:
    """Images in the training split (45,000 for CIFAR-10 with the default validation split)."""
    return cfg.data.synthetic_train if cfg.data.dataset == "synthetic" else 50_000 - cfg.data.val_size
