"""Seeds derived from the run's seed by name, so each source of randomness is independent and recorded."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` (e.g. ``"parent-init"``), a pure function of (seed, purpose)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's ``random`` (which DEAP uses), numpy and torch's global generators together."""
    random.seed(derive(seed, "search"))
    np.random.seed(derive(seed, "numpy") % 2**32)
    try:
        import torch
    except ImportError:  # the search alone runs without torch
        return
    torch.manual_seed(derive(seed, "torch"))
