"""Where computation runs: the CPU's usable cores, the threads an evaluation uses, and ``--device`` resolved."""

from __future__ import annotations

import os

from evo_sparse.foundations.errors import ConfigError

CPU_THREADS = 1  # per evaluation: deterministic, and immune to oversubscribed cores; parallelism comes from workers


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity), at least 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(name: str):
    """``auto`` picks CUDA when present, else the CPU; ConfigError for a device this machine does not have."""
    import torch  # here: the layers that know no torch import this module too

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and not count:
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= count:
        raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device
