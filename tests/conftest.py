"""Shared test setup: one CPU thread (the machines are shared) and every generator seeded before each test."""

import pytest
import torch

from evo_sparse.foundations.seeds import seed_everything

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Seed ``random`` (DEAP's generator), numpy and torch so every test is deterministic on its own."""
    seed_everything(0)
    torch.set_num_threads(1)
    yield
