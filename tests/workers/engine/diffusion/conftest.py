"""Tiny diffusion models for the fast tests (the slow digits test builds its own, larger ones)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from workers.engine.diffusion.params import DiffusionModelConfig

# ~20k parameters: a forward + backward on a batch of 8 digits takes milliseconds.
TINY_CONFIG = DiffusionModelConfig(base_channels=8, channel_mults=[1, 2], norm_groups=4)


@pytest.fixture(scope="session")
def tiny_config() -> DiffusionModelConfig:
    return TINY_CONFIG


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread() -> Iterator[None]:
    """Run these small-tensor tests on one intra-op thread. 8x8 convolutions are too small to gain from a
    second thread, and on a 2-core machine shared with other processes the threads' synchronisation made a
    4-step SFD run take 15 s instead of 0.4 s. Results are deterministic for a fixed thread count either
    way; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
