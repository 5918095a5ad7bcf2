"""The Ray backend on a cluster started by ``ray start``, as README's *Beyond one device* sets one up: a head and a
second node on this machine with Ray's token authentication, a smoke search through ``--address`` that writes the
local backend's journal, and the one-line error when the cluster refuses the driver's token.

The nodes run ``ray start --block`` in their own sessions and are stopped by SIGTERM to their process groups, not by
``ray stop``, which would stop every Ray process of this user on the machine (other test runs' too)."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from evo_sparse.execution.ray import RayMap
from evo_sparse.foundations.errors import ConfigError
from evo_sparse.foundations.presets import preset
from evo_sparse.runs.run import execute

ray = pytest.importorskip("ray")

ADDRESS = "10.0.0.1:6379"
# What Ray 2.60's ray.init(address=...) raises when the cluster refuses the token, after ~20 s of retries
# (the cause's traceback shortened).
REFUSED = (
    'Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n  File "python/ray/includes/'
    'common.pxi", line 119, in ray._raylet.check_status\nray.exceptions.AuthenticationError: RPC error: '
    "InvalidAuthToken: Authentication token is missing or incorrect. Note: RAY_AUTH_MODE is currently 'disabled' "
    "(not 'token'). Ensure that the token for the cluster is available in a local file (e.g., ~/.ray/auth_token or "
    "via RAY_AUTH_TOKEN_PATH) or as the `RAY_AUTH_TOKEN` environment variable.\n"
)
UNSET_HELP = (
    f"--address {ADDRESS}: the Ray cluster refused this driver's authentication (Ray token auth): RAY_AUTH_MODE is "
    "unset here; set RAY_AUTH_MODE=token in this environment, as on every node, with the cluster's token "
    "(`ray get-auth-token` on the head prints it) in ~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN"
)
TOKEN_HELP = (
    f"--address {ADDRESS}: the Ray cluster refused this driver's authentication (Ray token auth): RAY_AUTH_MODE=token "
    "is set here, but this environment's token is missing or not the cluster's; put the head's token "
    "(`ray get-auth-token` there prints it) in ~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN"
)


def connect_failing_with(monkeypatch, error: BaseException, address: str = ADDRESS) -> str:
    """The ConfigError line of a RayMap whose ``ray.init`` raises ``error``."""

    def init(**_):
        raise error

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ConfigError) as caught:
        RayMap(preset("smoke").updated({"backend": "ray", "address": address}))
    line = str(caught.value)
    assert "\n" not in line
    return line


def refused() -> ConnectionError:
    try:
        try:
            raise RuntimeError(REFUSED)
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379") from cause
    except ConnectionError as error:
        return error


# --- the one line, on a simulated refusal -----------------------------------------------------------------------------


def test_a_refused_token_says_to_set_ray_auth_mode(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert connect_failing_with(monkeypatch, refused()) == UNSET_HELP


def test_a_wrong_or_missing_token_in_token_mode_says_to_bring_the_heads(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert connect_failing_with(monkeypatch, refused()) == TOKEN_HELP
    # token mode and no token at all: Ray raises its AuthenticationError at once, itself
    missing = ray.exceptions.AuthenticationError(
        "Token authentication is enabled but no authentication token was found"
    )
    assert connect_failing_with(monkeypatch, missing) == TOKEN_HELP


def test_an_unreachable_cluster_keeps_its_own_message(monkeypatch):
    line = connect_failing_with(monkeypatch, ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))
    assert line == (
        f"--backend ray: cannot connect to the Ray cluster at {ADDRESS} (ConnectionError: Failed to connect to Ray "
        "cluster at 10.0.0.1:6379); check --address"
    )


# --- a real cluster: a head and a second node -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_members(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after "(comm)": state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def stop(node: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` (it stops the node's processes in order: a SIGTERM to all of them at once
    takes ~30 s), then SIGKILL to its process group if anything lingers."""
    node.terminate()
    deadline = time.monotonic() + 30
    while (node.poll() is None or session_members(node.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if node.poll() is None or session_members(node.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=10)


def start(args: list[str], env: dict, log: Path, temp_dir: str) -> subprocess.Popen:
    """``ray start --block ARGS`` on loopback with one CPU and no GPU, returned once Ray says the node runs."""
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    command = [
        *ray_cli,
        "start",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        *args,
    ]
    command += ["--temp-dir", temp_dir, "--disable-usage-stats"]
    with log.open("w") as out:
        node = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            stop(node)
            pytest.fail(f"ray start {' '.join(args)} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node, both with token auth and a token of their own (so ~/.ray is not touched);
    yields the address and the environment a driver needs."""
    logs = tmp_path_factory.mktemp("ray_logs")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 characters
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(start(["--head", "--port", str(port), "--include-dashboard=false"], env, logs / "head", temp_dir))
        nodes.append(start(["--address", address], env, logs / "node", temp_dir))
        yield address, env
    finally:
        for node in reversed(nodes):
            stop(node)
        left = [pid for node in nodes for pid in session_members(node.pid)]
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def evo_sparse(*args: str, env: dict, runs_dir: Path) -> subprocess.CompletedProcess:
    """``evo-sparse run --preset smoke`` in a fresh process (so Ray's caches of auth mode and token start empty)."""
    command = [sys.executable, "-m", "evo_sparse", "run", "--preset", "smoke", "--quiet", "--runs-dir", str(runs_dir)]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)


def journal(folder: Path) -> dict[tuple[int, int], dict]:
    """Journal records by (gen, index), without wall-clock ``seconds``."""
    records = [json.loads(line) for line in (folder / "evaluations.jsonl").read_text().splitlines()]
    return {(r["gen"], r["index"]): {k: v for k, v in r.items() if k != "seconds"} for r in records}


def test_a_two_node_cluster_with_token_auth_gives_the_local_results(cluster, tmp_path):
    address, env = cluster
    result = evo_sparse("--backend", "ray", "--address", address, "--device", "cpu", env=env, runs_dir=tmp_path / "ray")
    assert result.returncode == 0, result.stderr
    assert "ray: 2 CPUs, 0 GPUs in the cluster" in result.stderr  # both nodes joined
    on_ray = journal(Path(result.stdout.strip().splitlines()[-1]))
    local = execute(
        preset("smoke").updated({"backend": "local", "device": "cpu", "runs_dir": str(tmp_path / "local")}),
        log=lambda _: None,
        show_progress=False,
    )
    assert on_ray == journal(local)
    assert len(on_ray) == 12 and {r["status"] for r in on_ray.values()} == {"ok"}


@pytest.mark.parametrize("auth", ["none", "wrong token"])
def test_a_driver_without_the_clusters_token_is_told_so(cluster, tmp_path, auth):
    address, env = cluster
    env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    if auth == "wrong token":
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray retries the refused connection ~20 s by default
    result = evo_sparse("--backend", "ray", "--address", address, env=env, runs_dir=tmp_path)
    assert result.returncode == 2
    expected = (UNSET_HELP if auth == "none" else TOKEN_HELP).replace(ADDRESS, address)
    assert result.stderr.strip().splitlines()[-1] == f"evo-sparse: error: {expected}"
