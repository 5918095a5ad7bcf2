"""The fidelity study (``evo-sparse fidelity``): how much of a fitness value is the mask, per training recipe.

For one run's settings it draws M random masks per sampling mode and trains each under R replicates (``fitness.
Replicate``: another data order and augmentation, the same parent weights and mask) at every budget
(``--train-images``) and peak learning rate (``--lr``), exactly as a run scores a mask (same evaluator, packs and
backends). Per setting it reports the between- and within-mask spread, ICC(1) with a bootstrap CI, the mean Spearman
between replicates, how many replicates Spearman–Brown says reach the target reliability, and the seconds one
training takes (``measurement``). With ``--reference-epochs E`` every mask is also trained once by the preset's final
recipe for E epochs, and each setting's replicate-mean fitness is ranked against that test accuracy (Kendall τ).

Folder ``<runs_dir>/fidelity_<hash>/seed_<seed>/`` (the hash covers the run's settings but the varied ones, and R):

- ``config.json``: the base run config; ``trainings.jsonl``: one row per (setting, mask), written as it finishes, with
  the R replicates' fitness values; a rerun skips every row already there, so a killed study resumes, and a study
  with more masks, budgets or rates trains only what is new.
- ``reference_<recipe hash>/<sampling>/random_<i>_seed0.json``: the reference trainings (``final``).
- ``fidelity.json``: the report; ``fidelity_reliability.png`` / ``.pdf`` / ``.json``: its figure (``plots.fidelity``),
  rewritten at the end.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.errors import ConfigError, RunStateError
from evo_sparse.foundations.paths import FidelityPaths, fidelity_folder, final_folder, result_name
from evo_sparse.foundations.presets import final_preset
from evo_sparse.foundations.seeds import derive
from evo_sparse.foundations.storage import SCHEMA_VERSION, append_jsonl, folder_lock, read_json, read_jsonl, write_json
from evo_sparse.models.masks import Layout, Mask, sample
from evo_sparse.stats import measurement

NO_EARLY = {"status": "not measured"}  # a reference training needs no early fitness of its own
VARIED = ("train.train_images", "train.lr", "search.sampling", "train.replicates")


@dataclass(frozen=True)
class Setting:
    """One recipe whose fidelity is measured."""

    sampling: str
    train_images: int
    lr: float

    def key(self) -> str:
        return f"{self.sampling}/{self.train_images}/{self.lr!r}"

    @classmethod
    def parse(cls, key: str) -> Setting:
        sampling, images, lr = key.split("/")
        return cls(sampling, int(images), float(lr))

    def config(self, base: RunConfig, replicates: int) -> RunConfig:
        return base.updated({
            "search.sampling": self.sampling,
            "train.train_images": self.train_images,
            "train.lr": self.lr,
            "train.replicates": replicates,
        }).validate()  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What a fidelity study measures: ``masks`` per sampling, ``replicates`` per mask, every setting."""

    base: RunConfig
    masks: int
    replicates: int
    settings: tuple[Setting, ...]
    reference_epochs: int = 0
    target: float = 0.7

    def validate(self) -> Plan:
        if self.masks < 3:
            raise ConfigError(f"--masks must be at least 3 (a rank correlation needs 3), not {self.masks}")
        if self.replicates < 2:
            raise ConfigError(
                f"--replicates must be at least 2 (noise is the spread between them), not {self.replicates}"
            )
        if self.reference_epochs < 0:
            raise ConfigError(f"--reference-epochs must be 0 (none) or more, not {self.reference_epochs}")
        if not 0 < self.target < 1:
            raise ConfigError(f"--target must be a reliability in (0, 1), not {self.target}")
        for s in self.settings:
            s.config(self.base, self.replicates)
        return self

    def folder(self) -> Path:
        key = fixed_items(self.base) | {"replicates": self.replicates}
        return fidelity_folder(self.base.runs_dir, key, self.base.seed)

    def samplings(self) -> list[str]:
        return list(dict.fromkeys(s.sampling for s in self.settings))


def fixed_items(cfg: RunConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that differ from the defaults and that a fidelity study holds fixed (not ``VARIED``)."""
    return {k: v for k, v in cfg.hashed_items().items() if k not in VARIED}


def grid(samplings: list[str], train_images: list[int], lrs: list[float]) -> tuple[Setting, ...]:
    """Every combination, cheapest budgets first within a sampling and rate."""
    return tuple(Setting(s, b, lr) for s in samplings for lr in lrs for b in sorted(train_images))


def masks_for(layout: Layout, cfg: RunConfig, sampling: str, count: int) -> list[Mask]:
    """The study's masks of ``sampling``: mask i is a pure function of (seed, sampling, i), whatever ``count``."""
    out = []
    for i in range(count):
        rng = random.Random(derive(cfg.seed, f"fidelity-mask:{sampling}:{i}"))
        out.append(Mask(layout, tuple(sample(layout, cfg.search.sparsity, sampling, rng))))
    return out


# --- running ---------------------------------------------------------------------------------------------------------


def execute(plan: Plan, *, log: Callable[[str], None] = print, show_progress: bool = True) -> tuple[Path, dict]:
    """Train what is missing, then write and return the report; (folder, report)."""
    from evo_sparse.execution import backends
    from evo_sparse.foundations.devices import resolve_device
    from evo_sparse.foundations.progress import StudyProgress
    from evo_sparse.runs.run import layout_of
    from evo_sparse.training.data import load_splits

    backends.refuse_while_bootstrapping()
    plan.validate()
    root = plan.folder()
    layout = layout_of(plan.base)
    device = None if plan.base.backend == "ray" else resolve_device(plan.base.device)
    splits = load_splits(plan.base, log)
    progress = StudyProgress(log, enabled=show_progress, label="fidelity")
    with folder_lock(FidelityPaths(root).lock):
        _check_config(root, plan.base)
        done = {(r["setting"], r["mask_index"]): r for r in read_jsonl(FidelityPaths(root).trainings)}
        masks = {s: masks_for(layout, plan.base, s, plan.masks) for s in plan.samplings()}
        todo, on_disk = [], []
        for setting in plan.settings:
            cfg = setting.config(plan.base, plan.replicates)
            for i, mask in enumerate(masks[setting.sampling]):
                work = _work(cfg, mask)
                progress.add(1, work)
                row = done.get((setting.key(), i))
                if row is not None and row["mask"] != mask.encode():
                    raise RunStateError(f"{root / 'trainings.jsonl'} holds another mask at {setting.key()} #{i}")
                (todo if row is None else on_disk).append((setting, i, work))
        progress.skipped(len(on_disk), sum(w for *_, w in on_disk), "mask trainings")
        for setting in plan.settings:
            mine = [(i, w) for s, i, w in todo if s == setting]
            if not mine:
                continue
            cfg = setting.config(plan.base, plan.replicates)
            pool = backends.start(backends.plan(cfg, device), cfg, splits, log)
            try:
                genomes = [masks[setting.sampling][i].bits for i, _ in mine]
                for j, record in pool.unordered(genomes, [i for i, _ in mine]):
                    i, work = mine[j]
                    row = {"schema": SCHEMA_VERSION, "setting": setting.key(), "mask_index": i} | record
                    append_jsonl(FidelityPaths(root).trainings, [row | {"mask": masks[setting.sampling][i].encode()}])
                    done[(setting.key(), i)] = row
                    progress.finished(f"{setting.key()} mask {i}: {_values(record)}", work)
            finally:
                pool.close()
        reference = _reference(plan, root, masks, device, log) if plan.reference_epochs else {}
        report = summarize(plan, done, reference)
        write_json(FidelityPaths(root).report, report)
    from evo_sparse.study.plots import fidelity as draw

    draw(report, root)
    return root, report


def _check_config(root: Path, base: RunConfig) -> None:
    path = FidelityPaths(root).config
    if path.exists():
        saved = RunConfig.from_dict({k: v for k, v in read_json(path, "fidelity config").items() if k != "schema"})
        if fixed_items(saved) != fixed_items(base):
            raise RunStateError(f"{path} was written by other settings; use another --runs-dir")
    else:  # the base config, with one training per fitness: the study's own --replicates is in its report
        fixed = dataclasses.replace(base, train=dataclasses.replace(base.train, replicates=1))
        write_json(path, {"schema": SCHEMA_VERSION, **fixed.to_dict()})


def _work(cfg: RunConfig, mask: Mask) -> float:
    from evo_sparse.study.final import training_cost

    return cfg.train.replicates * cfg.train.train_images * training_cost(cfg, mask.widths())


def _values(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"failed: {record['reason']}"
    return " ".join(f"{v:.4f}" for v in record["replicate_fitness"])


def _reference(plan: Plan, root: Path, masks: dict[str, list[Mask]], device, log) -> dict[str, list[float | None]]:
    """Test accuracy of every mask after the preset's final recipe for ``reference_epochs`` epochs (one seed)."""
    from evo_sparse.foundations.progress import StudyProgress
    from evo_sparse.study import final

    recipe = final_preset(plan.base.preset).updated({"epochs": plan.reference_epochs, "seeds": 1})
    jobs = []
    for sampling, ms in masks.items():
        cfg = plan.base.updated({"search.sampling": sampling})
        folder = final_folder(FidelityPaths(root).reference, recipe) / sampling
        for i, m in enumerate(ms):
            path = folder / result_name("random", i, 0)
            jobs.append(
                final.Job(cfg, recipe, "random", i, 0, m.encode(), cfg.search.sparsity, NO_EARLY, path, str(root))
            )
    progress = StudyProgress(log, label="reference")
    progress.add(len(jobs), sum(j.work for j in jobs))
    progress.skip_done(jobs)

    def on_done(job, record):
        progress.trained(f"{job.cfg.search.sampling} mask {job.index}", job, record)

    workers = plan.base.workers if plan.base.backend != "local" else 1
    records = final.execute(jobs, device=str(device or "cpu"), workers=workers, on_done=on_done)
    out: dict[str, list[float | None]] = {s: [None] * len(ms) for s, ms in masks.items()}
    for job, record in zip(jobs, records):
        out[job.cfg.search.sampling][job.index] = record.get("final_test_acc")
    return out


# --- the report ------------------------------------------------------------------------------------------------------


def summarize(plan: Plan, rows: dict[tuple[str, int], dict[str, Any]], reference: dict) -> dict[str, Any]:
    """The report: for every setting of ``plan`` and every one already measured in the folder (its first
    ``plan.masks`` masks), ``measurement.reliability`` of its [masks, replicates] fitness matrix, seconds per
    training and (with a reference) Kendall τ of the replicate means against the reference test accuracy."""
    from evo_sparse.stats.analysis import rank_correlation

    settings = []
    on_disk = {Setting.parse(k) for k, i in rows if i < plan.masks}
    for s in sorted(set(plan.settings) | on_disk, key=lambda s: (s.sampling, s.lr, s.train_images)):
        mine = [rows.get((s.key(), i)) for i in range(plan.masks)]
        matrix = [[_num(v) for v in r["replicate_fitness"]] if r else [float("nan")] * plan.replicates for r in mine]
        entry: dict[str, Any] = dataclasses.asdict(s) | {"key": s.key()}
        try:
            entry |= measurement.reliability(matrix, target=plan.target, seed=plan.base.seed)
        except ValueError as exc:
            entry |= {"note": str(exc)}
        seconds = [r["seconds"] / plan.replicates for r in mine if r and r["status"] == "ok"]
        entry["seconds_per_training"] = statistics.median(seconds) if seconds else None
        entry["failed"] = sum(1 for r in mine if r is None or r["status"] != "ok")
        ref = reference.get(s.sampling)
        if ref:
            pairs = [(r["fitness"], a) for r, a in zip(mine, ref) if r and r["status"] == "ok" and a is not None]
            tau = rank_correlation([p[0] for p in pairs], [p[1] for p in pairs], seed=plan.base.seed)
            entry["reference"] = {k: tau[k] for k in ("n", "kendall_tau", "kendall_tau_ci", "note")}
        settings.append(entry)
    return {
        "schema": SCHEMA_VERSION,
        "what": "fitness reliability: variance of a fitness over masks vs over replicate trainings of one mask",
        "preset": plan.base.preset,
        "model": {"depth": plan.base.model.depth, "width": plan.base.model.width} | _named(plan.base.model),
        "sparsity": plan.base.search.sparsity,
        "seed": plan.base.seed,
        "masks": plan.masks,
        "replicates": plan.replicates,
        "target": plan.target,
        "reference_epochs": plan.reference_epochs,
        "pack": plan.base.train.pack,
        "batch_size": plan.base.train.batch_size,
        "val_images": plan.base.train.val_images,
        "settings": settings,
    }


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table, one line per setting."""
    head = (
        f"fidelity: {report['masks']} masks x {report['replicates']} replicates, sparsity {report['sparsity']}, "
        f"{_label(report['model'])}, preset {report['preset']}, seed {report['seed']}"
    )
    cols = f"{'sampling':<10} {'images':>7} {'lr':>6} {'masks':>5} {'between sd':>10} {'within sd':>9} "
    target = f"R for {report['target']:g}"
    cols += f"{'ICC(1) [95% CI]':>22} {'rel. of mean':>12} {'Spearman':>8} {target:>8} {'s/train':>7}"
    if report["reference_epochs"]:
        cols += f" {'tau vs ' + str(report['reference_epochs']) + ' ep.':>18}"
    lines = [head, cols]
    for e in report["settings"]:
        if "icc" not in e:
            lines.append(f"{e['sampling']:<10} {e['train_images']:>7} {e['lr']:>6g}  {e['note']}")
            continue
        ci = e["icc_ci"]
        icc = f"{_f(e['icc'])} [{_f(ci[0])}, {_f(ci[1])}]"
        line = (
            f"{e['sampling']:<10} {e['train_images']:>7} {e['lr']:>6g} {e['masks']:>5} {_f(e['between_sd']):>10} "
            f"{_f(e['within_sd']):>9} {icc:>22} {_f(e['reliability_of_mean']):>12} {_f(e['spearman']):>8} "
            f"{e['replicates_for_target'] or 'never':>8} {_f(e['seconds_per_training'], 1):>7}"
        )
        ref = e.get("reference")
        if ref:
            tau = ref["kendall_tau"]
            ci = ref["kendall_tau_ci"] or [None, None]
            line += f" {_f(tau)} [{_f(ci[0])}, {_f(ci[1])}]" if tau is not None else f" {ref['note']}"
        lines.append(line)
    return "\n".join(lines)


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _named(model) -> dict[str, str]:
    """The model's name and label, for the report; the default network's are left out (reports written before other
    networks existed lack them, and stay as they were)."""
    from evo_sparse.models.registry import architecture

    return {} if model.name == "wrn" else {"name": model.name, "label": architecture(model).label}


def _label(model: dict) -> str:
    return model.get("label") or f"WRN-{model['depth']}-{model['width']}"
