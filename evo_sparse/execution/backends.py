"""Where a run's work runs: ``local`` (this process, ``execution.local``), ``process`` (spawned worker processes, one
per core or one per GPU, ``execution.process``) or ``ray`` (tasks on a Ray cluster, local or remote,
``execution.ray``). ``plan`` picks one from the config, ``start`` starts its map.

Every backend plugs into DEAP as ``toolbox.map`` and yields results in input order; ``unordered`` yields
``(position, result)`` as tasks finish, so the run journals each one at once. The work is the search's fitness
evaluations by default, or any ``Work`` (``execution.work``) that names its worker function by import path: the
study's final trainings run on the same backends with the same retries. A search task is a pack: the individuals at
``--pack`` consecutive places of the generation, trained together (``population``); with the default of 1, one
evaluation. A fitness value depends only on (config, seed, mask): on the CPU every evaluation runs with
``CPU_THREADS`` intra-op threads wherever it runs, each worker builds the very same ``Evaluator`` from the run's
config, and a pack always trains exactly ``--pack`` networks, each individual at the slot its place gives.

A worker that dies (killed, out of memory, its machine lost) costs only the task it was running: that one is
started again on another worker, at most ``max_retries`` times, after which it is recorded as failed; its record
carries ``retries``, the number of restarts. Worker processes are spawned, never forked, leave Ctrl-C to the parent,
and die with it however it ends, SIGKILL included.
"""

from __future__ import annotations

import functools
import importlib.util
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

from evo_sparse.execution.local import LocalMap, Map
from evo_sparse.execution.process import ProcessMap, refuse_while_bootstrapping
from evo_sparse.execution.ray import RAY_MISSING, RayMap
from evo_sparse.execution.work import Work, evaluation, run_task
from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.devices import cpu_cores
from evo_sparse.foundations.errors import ConfigError

__all__ = ["Plan", "plan", "refuse_while_bootstrapping", "start"]


# --- which backend ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Where a run's evaluations go: ``backend`` is local, process or ray; ``devices`` has one entry per worker
    process (process) or the one device (local); ``in_flight`` caps Ray's concurrent evaluations (0 = no cap)."""

    backend: str
    devices: tuple[str, ...] = ()
    in_flight: int = 0

    @property
    def workers(self) -> int:
        """Worker processes on this machine (0: none, evaluations run here or on the Ray cluster)."""
        return len(self.devices) if self.backend == "process" else 0

    def describe(self) -> str:
        if self.backend == "local":
            return "this process"
        if self.backend == "ray":
            return "Ray tasks" + (f", at most {self.in_flight} at once" if self.in_flight else "")
        on = "" if set(self.devices) == {"cpu"} else f" on {', '.join(self.devices)}"
        return f"{self.workers} worker process{'es' if self.workers > 1 else ''}{on}"


def plan(cfg: RunConfig, device) -> Plan:
    """The backend for ``cfg`` on this machine, ``device`` being ``devices.resolve_device(cfg.device)`` (unused, and
    may be None, for ray). ``auto``: worker processes on a multi-core CPU (one per core, or ``--workers``), this
    process on one GPU, one worker process per GPU on several; ``--workers 1`` means this process. ``process``:
    ``--workers`` processes, by default one per core (CPU) or per GPU (``cuda``/``auto``; ``cuda:N``: that one),
    spread round-robin over the GPUs. ConfigError when ray is asked for and not installed, or when nothing listens
    at ``--address``."""
    if cfg.backend == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(RAY_MISSING)
        _check_reachable(cfg.address)
        return Plan("ray", in_flight=cfg.workers)
    if device.type == "cuda":
        import torch

        gpus = [str(device)] if device.index is not None else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        n = cfg.workers or len(gpus)
        devices = tuple(gpus[i % len(gpus)] for i in range(n))
    else:
        n = cfg.workers or cpu_cores()
        devices = ("cpu",) * n
    if cfg.backend == "local" or (cfg.backend == "auto" and n <= 1):
        return Plan("local", (str(device),))
    return Plan("process", devices)


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """ConfigError when ``address`` is a ``host:port`` at which nothing listens (Ray itself would wait minutes)."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # none, auto, or a ray:// client address: Ray checks those
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            "`ray start --head` and give the address it prints, or leave --address out for a local one"
        ) from None


def start(
    where: Plan, cfg: RunConfig, splits, log: Callable[[str], None] = lambda _: None, *, work: Work | None = None
) -> Map:
    """The map of ``where``: a ``LocalMap``, ``ProcessMap`` or ``RayMap``; close it when done. ``work`` is what the
    tasks are: by default the search's evaluations of ``cfg`` (on ``splits`` here and on Ray; workers load their
    own); a given work runs its ``call`` in this process with attempt None on the local backend."""
    if where.backend == "process":
        return ProcessMap(cfg, devices=where.devices, work=work, log=log)
    if where.backend == "ray":
        return RayMap(cfg, splits, in_flight=where.in_flight, work=work, log=log)
    device = where.devices[0] if where.devices else "cpu"
    if work is not None:
        return LocalMap(functools.partial(run_task, work.remote, device, attempt=None), work)
    from evo_sparse.training.fitness import Evaluator

    evaluator = Evaluator(cfg, splits, device)
    return LocalMap(evaluator.evaluate_genomes, replace(evaluation(cfg), pack=evaluator.pack))
