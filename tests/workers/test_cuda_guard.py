"""workers/cuda_guard.py: the worker's parent cannot initialise CUDA, and a parent that did is not forked
from.

These run without a GPU or an NVIDIA driver (torch's CUDA build on a CPU machine): every path to CUDA still
goes through torch's lazy initialisation (``torch.cuda._lazy_init``, also reached from C++ when a tensor is
created on a CUDA device), which is what the guard intercepts; the forked-child case checks that the guard
then steps aside and torch answers itself.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.cuda
import torch.cuda.memory
import torch.cuda.random

from workers import cuda_guard
from workers.pool import TaskPool

CUDA_CALLS: dict[str, Callable[[], object]] = {
    "init": torch.cuda.init,
    "current_device": torch.cuda.current_device,
    "tensor on cuda": lambda: torch.zeros(1, device="cuda"),
    "cuda rng state": torch.cuda.get_rng_state,
    "free memory query": torch.cuda.mem_get_info,
}


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The guard installed in this test process, everything it patches restored afterwards."""
    for module in (torch.cuda, torch.cuda.memory, torch.cuda.random):
        monkeypatch.setattr(module, "_lazy_init", module._lazy_init)
    for entry in cuda_guard.DRIVER_ENTRY_POINTS:
        if hasattr(torch._C, entry):
            monkeypatch.setattr(torch._C, entry, getattr(torch._C, entry))
    monkeypatch.setattr(cuda_guard, "STATE", cuda_guard.GuardState())
    monkeypatch.delenv(cuda_guard.NVML_CHECK_ENV, raising=False)
    cuda_guard.install()
    yield
    monkeypatch.delenv(cuda_guard.NVML_CHECK_ENV, raising=False)


def test_a_fresh_parent_passes_and_availability_checks_go_through_nvml(guarded: None) -> None:
    assert cuda_guard.installed()
    assert os.environ[cuda_guard.NVML_CHECK_ENV] == "1"
    torch.cuda.is_available()  # asks NVML (or, on this build, nothing): no lazy init
    cuda_guard.assert_untouched("in the test")
    assert cuda_guard.report()["refused_attempts"] == 0


def test_the_device_count_without_a_driver_is_zero_and_with_one_is_refused(
    guarded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's NVML count falls back to cudaGetDeviceCount when NVML cannot load: with no driver the parent
    gets 0 without the runtime being called; where a driver exists the raw call is refused."""
    if not hasattr(torch._C, cuda_guard.DEVICE_COUNT_ENTRY):
        pytest.skip("a CPU build of torch has no cudaGetDeviceCount entry point")
    monkeypatch.setattr(cuda_guard, "nvidia_driver_absent", lambda: True)
    assert torch._C._cuda_getDeviceCount() == 0 and torch.cuda.device_count() == 0
    assert cuda_guard.report()["refused_attempts"] == 0
    monkeypatch.setattr(cuda_guard, "nvidia_driver_absent", lambda: False)
    with pytest.raises(cuda_guard.CudaInParentError, match="parent process"):
        torch._C._cuda_getDeviceCount()
    assert [attempt["entry"] for attempt in cuda_guard.STATE.attempts] == ["torch._C._cuda_getDeviceCount"]


@pytest.mark.parametrize("call", sorted(CUDA_CALLS))
def test_every_way_into_cuda_is_refused_and_recorded_in_the_parent(guarded: None, call: str) -> None:
    with pytest.raises(cuda_guard.CudaInParentError, match="parent process"):
        CUDA_CALLS[call]()
    assert [attempt["entry"] for attempt in cuda_guard.STATE.attempts] == ["torch.cuda._lazy_init"]
    assert not torch.cuda.is_initialized()
    # A refused attempt that something swallowed still stops the worker before it forks.
    with pytest.raises(cuda_guard.CudaInParentError, match="refusing to fork"):
        cuda_guard.assert_untouched("after the preload")


def _child_calls_cuda(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        torch.cuda.current_device()
    except Exception as exc:  # the CPU build's own answer
        queue.put(type(exc).__name__)
    else:
        queue.put("ok")


def test_a_forked_child_reaches_torch_itself(guarded: None) -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_calls_cuda, args=(queue,))
    child.start()
    answer = queue.get(timeout=60)
    child.join(timeout=60)
    # Not CudaInParentError: in a job child the guard calls torch's own lazy init ("not compiled with CUDA"
    # here; the device's initialisation on a CUDA build).
    assert answer in ("AssertionError", "RuntimeError", "ok")
    assert cuda_guard.STATE.attempts == []


def test_the_pool_refuses_to_fork_from_a_parent_with_cuda_initialised(
    guarded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch's lazy-init state, as if something had initialised CUDA before the guard was installed.
    monkeypatch.setattr(torch.cuda, "_initialized", True)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    assert torch.cuda.is_initialized()
    pool = object.__new__(TaskPool)
    with pytest.raises(cuda_guard.CudaInParentError, match="before the first fork"):
        TaskPool.on_start(pool)
