"""Where fitness evaluations run: ``local`` (this process), ``process`` (spawned worker processes, one per core or
one per GPU) or ``ray`` (tasks on a Ray cluster, local or remote). ``plan`` picks one from the config.

Every backend plugs into DEAP as ``toolbox.map`` and yields records in input order; ``unordered`` yields
``(position, record)`` as evaluations finish, so the run journals each one at once. A task is a pack: the
individuals at ``--pack`` consecutive places of the generation, trained together (``population``); with the default
of 1, one evaluation. A fitness value depends only on (config, seed, mask): on the CPU every evaluation runs with
``CPU_THREADS`` intra-op threads wherever it runs (thread count changes float summation order, hence results), each
worker builds the very same ``Evaluator`` from the run's config, and a pack always trains exactly ``--pack``
networks, each individual at the slot its place gives (empty slots are filled with copies).

A worker that dies (killed, out of memory, its machine lost) costs only the task it was running: that one is
started again on another worker (a restarted process, or whichever Ray node has room), at most ``max_retries`` times,
after which it is recorded as failed; its record carries ``retries``, the number of restarts. Worker processes are
spawned, never forked (no inherited CUDA or OpenMP state), leave Ctrl-C to the parent, and die with it however it
ends, SIGKILL included. (``multiprocessing.Pool``, used before, waits forever for a worker the OS killed.)
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from typing import Any

from evo_sparse.foundations import faults
from evo_sparse.foundations.config import RunConfig, pack_size
from evo_sparse.foundations.devices import CPU_THREADS, cpu_cores
from evo_sparse.foundations.errors import ConfigError, EvoSparseError

RAY_MISSING = "--backend ray needs Ray, an optional extra not installed here: pip install 'evo-sparse[ray]'"

# (index in the map's input per slot of the pack, the genome per slot, attempt: 0 first, then retries); None: empty slot
Task = tuple[list[int | None], list[list[int] | None], int]


# A worker process that found itself re-running the user's script (see ``refuse_while_bootstrapping``) exits with this
UNGUARDED_EXIT = 86
UNGUARDED = (
    "worker processes re-ran this script from its start (Python starts them by importing the main module): put the "
    'script\'s work under `if __name__ == "__main__":`, or pass backend="local" in the config'
)


def refuse_while_bootstrapping() -> None:
    """End this process at once (exit ``UNGUARDED_EXIT``, no traceback) when it is a spawned worker still importing the
    parent's main module: a script without an ``if __name__ == "__main__":`` guard re-runs its search there. The
    parent's ``ProcessMap`` turns that exit code into one line saying what to do, and records no failed evaluation."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        os._exit(UNGUARDED_EXIT)


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


def start(where: Plan, cfg: RunConfig, splits, log: Callable[[str], None] = lambda _: None) -> _Map:
    """The map of ``where``: a ``LocalMap``, ``ProcessMap`` or ``RayMap``; close it when done."""
    if where.backend == "process":
        return ProcessMap(cfg, devices=where.devices, log=log)
    if where.backend == "ray":
        return RayMap(cfg, splits, in_flight=where.in_flight, log=log)
    from evo_sparse.training.fitness import Evaluator

    return LocalMap(Evaluator(cfg, splits, where.devices[0] if where.devices else "cpu"))


def in_order(finished: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Records of ``(position, record)`` pairs arriving in any order, yielded in position order as soon as possible."""
    waiting: dict[int, dict[str, Any]] = {}
    nxt = 0
    for position, record in finished:
        waiting[position] = record
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1


def _with_retries(record: dict[str, Any], attempt: int) -> dict[str, Any]:
    return dict(record, retries=attempt) if attempt else record


def _finished(positions: list[int | None], records: list, attempt: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, record)`` for the filled slots of a finished task."""
    for position, record in zip(positions, records, strict=True):
        if position is not None:
            yield position, _with_retries(record, attempt)


def _lost_records(cfg: RunConfig, task: Task, reason: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(position, failed record)`` for each individual of a task that never finished."""
    from evo_sparse.training.fitness import lost_record

    positions, genomes, attempt = task
    return _finished(positions, [None if g is None else lost_record(cfg, g, reason) for g in genomes], attempt)


# --- inside a worker (process or Ray) ---------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _evaluator(cfg_dict: dict[str, Any], device: str, splits: Callable | None = None):
    """This worker's ``Evaluator`` for (config, device), built at the first call and kept; ``splits()`` gives the
    data (default: loaded from the config, i.e. from this machine's cache)."""
    key = (json.dumps(cfg_dict, sort_keys=True), device)
    if _worker.get("key") != key:
        import torch

        from evo_sparse.training.data import load_splits
        from evo_sparse.training.fitness import Evaluator

        _worker.clear()
        torch.set_num_threads(CPU_THREADS)
        cfg = RunConfig.from_dict(cfg_dict)
        data = splits() if splits else load_splits(cfg, log=lambda _: None)
        _worker.update(key=key, seed=cfg.seed, evaluate=Evaluator(cfg, data, device))
    return _worker["evaluate"]


def _evaluate_in_worker(cfg_dict, device: str, genomes: list[list[int]], attempt: int, splits=None) -> list[dict]:
    evaluator = _evaluator(cfg_dict, device, splits)
    if faults.spec():  # test hook: this worker dies here when EVO_SPARSE_FAULT says so
        from evo_sparse.models.masks import Mask

        for genome in filter(None, genomes):
            faults.crash_worker(_worker["seed"], Mask(evaluator.layout, tuple(genome)).encode(), attempt)
    return evaluator.evaluate_genomes(genomes)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it is one of evo-sparse's errors (the parent shows it in one line), else a RuntimeError
    carrying the worker's traceback (a bug: the parent raises it with that traceback)."""
    if isinstance(exc, EvoSparseError):
        return exc
    return RuntimeError("in a worker process:\n" + "".join(traceback.format_exception(exc)))


# --- process: spawned worker processes -------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """End this worker when the run's process ends in any way, SIGKILL included, so none keeps computing for nobody.

    Linux: the kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG); elsewhere a thread watches the parent.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        else:
            if os.getppid() != parent:  # it died before the call above
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _serve(conn, cfg_dict: dict[str, Any], parent: int, device: str) -> None:
    """A worker process: build the evaluator, say ``("ready", None, None)``, then answer ``(positions, genomes,
    attempt)`` with ``("done", positions, records)`` or ``("error", positions, exception)`` until the parent sends None
    or goes away."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is SIGTERM (a scheduler signals every process of the job)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held back during start-up (``_sigint_held``)
    startup: BaseException | None = None
    try:
        _evaluator(cfg_dict, device)  # now, so that data loading overlaps in all workers
    except Exception as exc:  # reported with the first task
        startup = _portable(exc)
    with contextlib.suppress(OSError):
        conn.send(("ready", None, None))  # --eval-timeout counts from here, not from the start-up
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        positions, genomes, attempt = task
        try:
            if startup is not None:
                raise startup
            reply = ("done", positions, _evaluate_in_worker(cfg_dict, device, genomes, attempt))
        except Exception as exc:
            reply = ("error", positions, _portable(exc))
        conn.send(reply)


@contextlib.contextmanager
def _sigint_held():
    """Hold SIGINT back (blocked, not ignored) while starting a worker. The worker inherits the block, so a Ctrl-C
    during its start-up stays pending there and is dropped when ``_serve`` ignores SIGINT and unblocks it; here it
    stays pending too and arrives as KeyboardInterrupt when the block ends, instead of being lost."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to hold
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Map:
    """What every backend shares: ``toolbox.map`` in input order over ``unordered``, built on ``_run``, which takes
    tasks of ``pack`` consecutive individuals."""

    pack = 1

    def __call__(self, func: Callable, individuals: Iterable) -> Iterator[dict[str, Any]]:
        """Evaluate ``individuals`` in order; ``func`` (the toolbox's evaluate) is ignored: workers hold their own."""
        return in_order(self.unordered(individuals))

    def unordered(self, individuals: Iterable, positions: Iterable[int] | None = None) -> Iterator[tuple[int, dict]]:
        """Evaluate ``individuals``, yielding ``(j, record)`` as each evaluation finishes, ``j`` indexing
        ``individuals``. ``positions`` (default 0, 1, ...) are their places in the generation: the one at position
        ``p`` trains in pack ``p // pack`` at slot ``p % pack`` however many of its pack are left to evaluate."""
        genomes = [list(ind) for ind in individuals]
        k = self.pack
        packs: dict[int, list[int | None]] = {}
        for j, p in enumerate(range(len(genomes)) if positions is None else positions):
            packs.setdefault(p // k, [None] * k)[p % k] = j
        tasks = [(slots, [None if j is None else genomes[j] for j in slots], 0) for slots in packs.values()]
        return self._run(collections.deque(tasks))

    def evaluate(self, genome) -> dict[str, Any]:
        """The same evaluation, run by the backend (one at a time: use the map for a population)."""
        ((_, record),) = list(self.unordered([genome]))
        return record

    def close(self) -> None:
        pass


class LocalMap(_Map):
    """``toolbox.map`` in this process: ``evaluator.evaluate_genomes`` a pack at a time."""

    def __init__(self, evaluator):
        self.evaluator, self.pack = evaluator, evaluator.pack

    def _run(self, todo: collections.deque[Task]) -> Iterator[tuple[int, dict[str, Any]]]:
        while todo:
            positions, genomes, _ = todo.popleft()
            yield from _finished(positions, self.evaluator.evaluate_genomes(genomes), 0)


class _Worker:
    """One spawned worker process and the parent's end of its pipe."""

    def __init__(self, ctx, cfg_dict: dict[str, Any], device: str):
        self.device = device
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, cfg_dict, os.getpid(), device), daemon=True)
        with _sigint_held():
            self.process.start()
        child.close()  # the parent keeps only its end, so a dead worker reads as EOF

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


EVAL_TIMEOUT_FACTOR, EVAL_TIMEOUT_FLOOR = 10, 60.0  # the automatic --eval-timeout: 10x the slowest, at least 60 s


def eval_limit(setting: float, slowest: float | None) -> float | None:
    """Seconds a task may run before its worker counts as hung: ``setting`` (``--eval-timeout``) when positive, else
    ``EVAL_TIMEOUT_FACTOR`` times the ``slowest`` task so far, at least ``EVAL_TIMEOUT_FLOOR``; None (no limit) while
    no task has finished."""
    if setting > 0:
        return setting
    return None if slowest is None else max(EVAL_TIMEOUT_FLOOR, EVAL_TIMEOUT_FACTOR * slowest)


class ProcessMap(_Map):
    """``toolbox.map`` over spawned worker processes, one task (a pack) at a time each, results in input order.

    ``devices`` gives each worker's device (default: ``workers`` CPU workers). A worker that dies mid-task is
    replaced by a new process and its task sent again (to the first free worker), up to ``max_retries``
    (default ``cfg.max_retries``) times; after that the evaluation is a failed record. The other workers carry on
    undisturbed. A dead worker is replaced when next needed (``restarts`` counts them).
    """

    def __init__(
        self,
        cfg: RunConfig,
        workers: int = 0,
        *,
        devices: Iterable[str] = (),
        max_retries: int | None = None,
        log: Callable[[str], None] = lambda _: None,
    ):
        self.cfg = cfg
        self.devices = tuple(devices) or ("cpu",) * workers
        if not self.devices:
            raise ValueError("ProcessMap needs at least one worker")
        self.workers = len(self.devices)
        self.max_retries = cfg.max_retries if max_retries is None else max_retries
        self.pack = pack_size(cfg)
        self.log = log
        self.restarts = 0  # workers replaced after dying
        self.slowest: float | None = None  # seconds of the slowest task so far (``eval_limit``)
        self._ctx = multiprocessing.get_context("spawn")
        self._cfg_dict = cfg.to_dict()
        self._slots = [_Worker(self._ctx, self._cfg_dict, d) for d in self.devices]

    def pids(self) -> list[int]:
        """The worker processes' pids (tests kill them)."""
        return [w.process.pid for w in self._slots]

    def close(self) -> None:
        for w in self._slots:
            w.stop()

    def _replace(self, slot: int) -> None:
        self._slots[slot].stop()
        self._slots[slot] = _Worker(self._ctx, self._cfg_dict, self.devices[slot])
        self.restarts += 1

    def _run(self, todo: collections.deque[Task]) -> Iterator[tuple[int, dict[str, Any]]]:
        busy: dict[int, Task] = {}  # slot -> the task its worker is evaluating
        started: dict[int, float] = {}  # slot -> when its task was sent
        try:
            while todo or busy:
                for slot, w in enumerate(self._slots):
                    if todo and slot not in busy:
                        if not w.process.is_alive():  # died while idle: nothing to retry
                            self._replace(slot)
                        busy[slot] = todo.popleft()
                        started[slot] = time.monotonic()
                        with contextlib.suppress(OSError):  # a worker dead by now reads as EOF below
                            self._slots[slot].conn.send(busy[slot])
                limit = eval_limit(self.cfg.eval_timeout, self.slowest)
                timeout = None if limit is None else max(0.0, min(started[s] for s in busy) + limit - time.monotonic())
                ready = wait(
                    [self._slots[s].conn for s in busy] + [self._slots[s].process.sentinel for s in busy], timeout
                )
                now = time.monotonic()
                for slot in list(busy):
                    w = self._slots[slot]
                    if w.conn not in ready and w.process.sentinel not in ready:
                        if limit is not None and now - started[slot] >= limit:  # hung: kill it, then as if it died
                            w.process.kill()
                            yield from self._lost(slot, busy.pop(slot), todo, hung=(now - started[slot], limit))
                        continue
                    try:
                        if not w.conn.poll():  # the process ended without a last word
                            raise EOFError
                        kind, positions, payload = w.conn.recv()
                    except (EOFError, OSError):
                        yield from self._lost(slot, busy.pop(slot), todo)
                        continue
                    if kind == "ready":  # a new worker has started up: its task's time starts now
                        started[slot] = now
                        continue
                    attempt = busy.pop(slot)[2]
                    self.slowest = max(self.slowest or 0.0, now - started[slot])
                    if kind == "error":
                        raise payload
                    yield from _finished(positions, payload, attempt)
        finally:
            for slot in busy:  # abandoned (Ctrl-C, an error): its answer must not be taken for the next task's
                self._slots[slot].stop()  # replaced when next needed

    def _lost(
        self, slot: int, task: Task, todo: collections.deque[Task], hung: tuple[float, float] | None = None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """The worker of ``slot`` died evaluating ``task`` (or was killed after ``hung`` = (seconds it ran, limit)):
        replace it; retry the task, or give its failed records."""
        positions, genomes, attempt = task
        w = self._slots[slot]
        w.process.join(1)
        if w.process.exitcode == UNGUARDED_EXIT:
            raise ConfigError(UNGUARDED)
        how = _how_it_ended(w.process.exitcode)
        if hung:
            how = f"gave no answer for {hung[0]:.0f} s (--eval-timeout {hung[1]:g} s) and was killed as hung"
        what = f"worker process {w.process.pid} ({w.device}) {how} during an evaluation"
        w.stop()  # replaced when next needed
        if attempt < self.max_retries:
            self.log(f"{what}; it is retried in a new worker ({attempt + 1} of at most {self.max_retries} retries)")
            todo.appendleft((positions, genomes, attempt + 1))
            return
        reason = f"{what}, {attempt + 1} time(s): its worker died at every attempt (--max-retries {self.max_retries})"
        self.log(f"{what}; no retries left (--max-retries {self.max_retries}): recorded as failed")
        yield from _lost_records(self.cfg, task, reason)


# --- ray: tasks on a Ray cluster --------------------------------------------------------------------------------------


def _ray_evaluate(cfg_dict: dict[str, Any], box: list, genomes: list[list[int]], attempt: int) -> list[dict]:
    """A Ray task: one pack on this worker's GPU (Ray sets CUDA_VISIBLE_DEVICES) or CPU. ``box`` holds the
    object-store reference of the splits, fetched only when this worker builds its evaluator."""
    import ray

    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return _evaluate_in_worker(cfg_dict, device, genomes, attempt, splits=lambda: ray.get(box[0]))


class RayMap(_Map):
    """``toolbox.map`` over Ray tasks, results in input order.

    Connects to ``cfg.address`` (or ``$RAY_ADDRESS``), or starts a local cluster of this machine's cores, unless Ray
    is already initialized in this process (then it uses that cluster and leaves it running). The data go into the
    object store once, so workers on other machines need no copy of CIFAR-10 (they need evo-sparse installed). Each
    task takes one CPU, and ``cfg.gpus_per_task`` GPUs when the cluster has GPUs and ``--device`` is not cpu.
    A task whose worker or node is lost is submitted again (Ray places it where there is room), at most
    ``cfg.max_retries`` times, then recorded as failed; Ray's own task retries are off, so that each is recorded.
    CPU workers keep their evaluator between tasks; a GPU task builds it again in a fresh worker (seconds).
    """

    def __init__(self, cfg: RunConfig, splits, *, in_flight: int = 0, log: Callable[[str], None] = lambda _: None):
        try:
            import ray
        except ImportError:
            raise ConfigError(RAY_MISSING) from None
        self.ray, self.cfg, self.log, self.in_flight = ray, cfg, log, in_flight
        self.max_retries = cfg.max_retries
        self.pack = pack_size(cfg)
        self.started = not ray.is_initialized()
        if self.started:
            local = not (cfg.address or os.environ.get("RAY_ADDRESS"))
            try:
                ray.init(
                    address=cfg.address,
                    num_cpus=cpu_cores() if local else None,  # Ray would count the machine's cores, not this process's
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            except Exception as exc:  # no cluster at that address, or Ray cannot start here
                where = (
                    "start a local Ray instance"
                    if local
                    else f"connect to the Ray cluster at {cfg.address or '$RAY_ADDRESS'}"
                )
                reason = " ".join(str(exc).split())[:300]
                raise ConfigError(
                    f"--backend ray: cannot {where} ({type(exc).__name__}: {reason}); check --address"
                ) from None
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        if cfg.device.startswith("cuda") and not gpus:
            self.close()
            raise ConfigError(f"--device {cfg.device}: the Ray cluster has no GPU; use --device cpu or auto")
        use_gpu = bool(gpus) and cfg.device != "cpu"
        options: dict[str, Any] = {"num_cpus": 1, "num_gpus": cfg.gpus_per_task if use_gpu else 0, "max_retries": 0}
        if faults.crash_environment():  # test hook: workers are not children of this process, so pass it on
            options["runtime_env"] = {"env_vars": faults.crash_environment()}
        # In ray.remote, not .options: a GPU task then gets a fresh worker process (Ray's max_calls=1 for GPU
        # functions), so no evaluator or CUDA context is carried over to a task given another GPU.
        self._task = ray.remote(**options)(_ray_evaluate)
        fitness_splits = replace(splits, test_x=splits.test_x[:0], test_y=splits.test_y[:0])  # the search never tests
        self._box = [ray.put(fitness_splits)]
        self._cfg_dict = cfg.to_dict()
        per_task = f"{options['num_gpus']:g} GPU per evaluation" if use_gpu else "CPU evaluations"
        log(f"ray: {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs in the cluster; {per_task}")

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()

    def _run(self, todo: collections.deque[Task]) -> Iterator[tuple[int, dict[str, Any]]]:
        ray = self.ray
        running: dict[Any, Task] = {}  # object ref -> task
        try:
            while todo or running:
                while todo and (not self.in_flight or len(running) < self.in_flight):
                    task = todo.popleft()
                    running[self._task.remote(self._cfg_dict, self._box, task[1], task[2])] = task
                (ref,), _ = ray.wait(list(running), num_returns=1)
                task = running.pop(ref)
                positions, genomes, attempt = task
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the evaluation raised: an EvoSparseError (or a bug)
                    raise _portable(exc.cause) if isinstance(exc.cause, BaseException) else exc from None
                except ray.exceptions.TaskCancelledError:
                    raise
                except ray.exceptions.RayError as exc:  # its worker or node was lost: try again elsewhere
                    what = f"a Ray task was lost ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                    if attempt < self.max_retries:
                        self.log(f"{what}; it is retried ({attempt + 1} of at most {self.max_retries} retries)")
                        todo.appendleft((positions, genomes, attempt + 1))
                        continue
                    self.log(f"{what}; no retries left (--max-retries {self.max_retries}): recorded as failed")
                    reason = f"{what}, {attempt + 1} time(s) (--max-retries {self.max_retries})"
                    yield from _lost_records(self.cfg, task, reason[:500])
                    continue
                yield from _finished(positions, records, attempt)
        finally:
            for ref in running:  # abandoned (Ctrl-C, an error)
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
