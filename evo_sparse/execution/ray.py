"""The ``ray`` backend: tasks on a Ray cluster, local or remote. (``import ray`` here is the Ray package: imports
are absolute.)"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from evo_sparse.execution.local import Map, finished, lost
from evo_sparse.execution.work import Task, Work, evaluate_genomes, evaluation, portable, run_task, warm_up
from evo_sparse.foundations import faults
from evo_sparse.foundations.config import RunConfig
from evo_sparse.foundations.devices import cpu_cores
from evo_sparse.foundations.errors import ConfigError

RAY_MISSING = "--backend ray needs Ray, an optional extra not installed here: pip install 'evo-sparse[ray]'"
AUTH_MARKS = ("InvalidAuthToken", "AuthenticationError")  # in the text of Ray's wrapped auth failures


def _ray_task(remote: tuple, items: list[Any], attempt: int) -> list[Any]:
    """A Ray task: ``Work.warm``, then its ``call`` on this worker's GPU (Ray sets CUDA_VISIBLE_DEVICES) or CPU."""
    import ray

    device = "cuda" if ray.get_gpu_ids() else "cpu"
    warm_up(remote, device)
    return run_task(remote, device, items, attempt)


def evaluate_from_store(cfg_dict, box: list, device: str, genomes: list[list[int]], attempt: int) -> list[dict]:
    """The search's evaluations on Ray: ``box`` holds the object-store reference of the splits, fetched only when
    this worker builds its evaluator (so workers on other machines need no copy of the data)."""
    import ray

    return evaluate_genomes(cfg_dict, device, genomes, attempt, splits=lambda: ray.get(box[0]))


def _refused_authentication(exc: BaseException, ray) -> bool:
    """Whether ``ray.init(address=...)`` failed on Ray's token authentication (Ray 2.60 turns it on for a cluster
    whose head found a token). Ray raises its ``AuthenticationError`` itself when this process has token mode and no
    token, but a token the cluster refuses (or none sent: RAY_AUTH_MODE not ``token`` here) comes, after ~20 s of
    retries, as ``ConnectionError: Failed to connect to Ray cluster at ...`` whose cause, a RuntimeError, quotes
    ``ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: ...`` in its text."""
    refused = getattr(ray.exceptions, "AuthenticationError", ())  # absent before token auth existed
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, refused) or any(mark in str(cause) for mark in AUTH_MARKS):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _authentication_help(address: str) -> str:
    """The one line for a cluster that refused this driver's token: what to set, by what this process has."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    where = "~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN"
    if mode != "token":
        what = (
            f"RAY_AUTH_MODE is {mode or 'unset'} here; set RAY_AUTH_MODE=token in this environment, as on every "
            f"node, with the cluster's token (`ray get-auth-token` on the head prints it) in {where}"
        )
    else:
        what = (
            "RAY_AUTH_MODE=token is set here, but this environment's token is missing or not the cluster's; put "
            f"the head's token (`ray get-auth-token` there prints it) in {where}"
        )
    return f"{address}: the Ray cluster refused this driver's authentication (Ray token auth): {what}"


class RayMap(Map):
    """``toolbox.map`` over Ray tasks, results in input order.

    Connects to ``cfg.address`` (or ``$RAY_ADDRESS``), or starts a local cluster of this machine's cores, unless Ray
    is already initialized in this process (then it uses that cluster and leaves it running). ``work`` is what the
    tasks are; by default the search's evaluations of ``cfg`` on ``splits``, which go into the object store once, so
    workers on other machines need no copy of CIFAR-10 (they need evo-sparse installed). Each task takes one CPU, and
    ``cfg.gpus_per_task`` GPUs when the cluster has GPUs and ``--device`` is not cpu. A task whose worker or node is
    lost is submitted again (Ray places it where there is room), at most ``cfg.max_retries`` times, then its items get
    ``work.lost`` results; Ray's own task retries are off, so that each is recorded. CPU workers keep their evaluator
    between tasks; a GPU task builds it again in a fresh worker (seconds).
    ConfigError (one line) when Ray cannot start or connect; a cluster that refuses this driver's token says so.
    """

    def __init__(
        self,
        cfg: RunConfig,
        splits=None,
        *,
        in_flight: int = 0,
        work: Work | None = None,
        log: Callable[[str], None] = lambda _: None,
    ):
        try:
            import ray
        except ImportError:
            raise ConfigError(RAY_MISSING) from None
        self.ray, self.cfg, self.log, self.in_flight = ray, cfg, log, in_flight
        self.max_retries = cfg.max_retries
        self.started = not ray.is_initialized()
        if self.started:
            local = not (cfg.address or os.environ.get("RAY_ADDRESS"))
            on_sigterm = _python_handler(signal.SIGTERM)
            try:
                ray.init(
                    address=cfg.address,
                    num_cpus=cpu_cores() if local else None,  # Ray would count the machine's cores, not this process's
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            except Exception as exc:  # no cluster at that address, its token refused, or Ray cannot start here
                if not local and _refused_authentication(exc, ray):
                    given = f"--address {cfg.address}" if cfg.address else f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
                    raise ConfigError(_authentication_help(given)) from None
                where = (
                    "start a local Ray instance"
                    if local
                    else f"connect to the Ray cluster at {cfg.address or '$RAY_ADDRESS'}"
                )
                reason = " ".join(str(exc).split())[:300]
                raise ConfigError(
                    f"--backend ray: cannot {where} ({type(exc).__name__}: {reason}); check --address"
                ) from None
            finally:
                # Ray's core puts its own SIGTERM handler in the driver, which aborts the process (exit -6): give the
                # run's back, so a scheduler's SIGTERM stops a Ray run as it stops any other (one line, exit 143)
                if on_sigterm is not None:
                    signal.signal(signal.SIGTERM, on_sigterm)
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
        self._task = ray.remote(**options)(_ray_task)
        if work is None:
            fitness_splits = replace(
                splits, test_x=splits.test_x[:0], test_y=splits.test_y[:0]
            )  # the search never tests
            box = [ray.put(fitness_splits)]  # in a list, so that Ray passes the reference, not the data, to each task
            work = replace(
                evaluation(cfg), call=f"{__name__}:evaluate_from_store", args=(cfg.to_dict(), box), warm=None
            )
        self.work = work
        per_task = f"{options['num_gpus']:g} GPU per {work.noun}" if use_gpu else f"CPU {work.noun}s"
        log(f"ray: {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs in the cluster; {per_task}")

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()

    def _run(self, todo: collections.deque[Task]) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        running: dict[Any, Task] = {}  # object ref -> task
        try:
            while todo or running:
                while todo and (not self.in_flight or len(running) < self.in_flight):
                    task = todo.popleft()
                    running[self._task.remote(self.work.remote, task[1], task[2])] = task
                (ref,), _ = ray.wait(list(running), num_returns=1)
                task = running.pop(ref)
                positions, items, attempt = task
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task raised: an EvoSparseError (or a bug)
                    raise portable(exc.cause) if isinstance(exc.cause, BaseException) else exc from None
                except ray.exceptions.TaskCancelledError:
                    raise
                except ray.exceptions.RayError as exc:  # its worker or node was lost: try again elsewhere
                    what = f"a Ray task was lost ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                    if attempt < self.max_retries:
                        self.log(f"{what}; it is retried ({attempt + 1} of at most {self.max_retries} retries)")
                        todo.appendleft((positions, items, attempt + 1))
                        continue
                    self.log(f"{what}; no retries left (--max-retries {self.max_retries}): recorded as failed")
                    reason = f"{what}, {attempt + 1} time(s) (--max-retries {self.max_retries})"
                    yield from lost(self.work, task, reason[:500])
                    continue
                yield from finished(positions, results, attempt)
        finally:
            for ref in running:  # abandoned (Ctrl-C, an error)
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)


def _python_handler(signum: int):
    """This process's Python handler of ``signum``, or None when there is none to give back (not the main thread, or
    the default or ignored disposition, which Ray leaves as it finds them)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signum)
    return handler if callable(handler) else None
