"""The worker's parent process never initialises CUDA: enforced, not hoped for.

Every job runs in a child forked from the worker's parent (one task per child, ``workers/pool.py``). CUDA
cannot be used in a child forked after its parent initialised it ("Cannot re-initialize CUDA in forked
subprocess"), so a single CUDA call in the parent -- a device query is enough -- would break every later
job. The parent preloads torch and the engine so that jobs start in milliseconds; this module makes sure the
preload (or anything else the parent runs: the dispatch probe, the pool) cannot reach CUDA:

* ``PYTORCH_NVML_BASED_CUDA_CHECK=1``: ``torch.cuda.is_available()`` / ``device_count()`` ask NVML instead of
  ``cudaGetDeviceCount``, which calls ``cuInit`` and poisons later forks;
* torch's lazy-init entry points (``torch.cuda._lazy_init`` wherever a ``torch.cuda`` module holds it, which
  is also what C++ calls when a tensor is first created on a CUDA device, and the C functions that start the
  driver, where the build has them) are wrapped: called in the parent they raise :class:`CudaInParentError`
  and are recorded; in a forked child they run as before;
* :func:`assert_untouched` is checked after the preload and again before the first fork: the worker refuses
  to start rather than hand out poisoned children.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

NVML_CHECK_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"
# C entry points that initialise the CUDA driver/runtime. Only wrapped where the build has them: adding one to
# a CPU build would make torch believe it was compiled with CUDA (torch.cuda._is_compiled).
DEVICE_COUNT_ENTRY = "_cuda_getDeviceCount"
DRIVER_ENTRY_POINTS = ("_cuda_init", DEVICE_COUNT_ENTRY)
GUARD_MARK = "_lethe_cuda_guard_original"


class CudaInParentError(RuntimeError):
    """Something in the worker's parent process tried to initialise CUDA."""


@dataclass
class GuardState:
    parent_pid: int | None = None
    attempts: list[dict[str, str]] = field(default_factory=list)


STATE = GuardState()


def _guarded(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guard(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() != STATE.parent_pid:  # a forked job child: CUDA is its to use
            return original(*args, **kwargs)
        caller = "".join(traceback.format_stack(limit=8)[:-1])
        STATE.attempts.append({"entry": name, "stack": caller})
        log.error("CUDA initialisation attempted in the worker's parent (%s), refused:\n%s", name, caller)
        raise CudaInParentError(
            f"{name} was called in the worker's parent process (pid {STATE.parent_pid}); CUDA must only be "
            "initialised in job children, or every later job fails"
        )

    setattr(guard, GUARD_MARK, original)
    return guard


def _original(function: Any) -> Any:
    return getattr(function, GUARD_MARK, function)


def nvidia_driver_absent() -> bool:
    """Whether this host has no NVIDIA driver: its NVML library (libnvidia-ml, which ships with the driver)
    cannot be loaded. Loading it initialises nothing."""
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return True
    return False


def _guarded_device_count(original: Callable[..., Any]) -> Callable[..., Any]:
    """``cudaGetDeviceCount`` for the parent. torch's NVML-based count falls back to it when NVML cannot be
    loaded; on a host without a driver (a CPU machine with the CUDA build of torch) there is no device to
    initialise and the answer is 0, given without calling the runtime. Where a driver exists the call is
    refused like every other way into CUDA."""
    guard = _guarded("torch._C._cuda_getDeviceCount", original)

    @functools.wraps(original)
    def device_count(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() == STATE.parent_pid and nvidia_driver_absent():
            return 0
        return guard(*args, **kwargs)

    setattr(device_count, GUARD_MARK, original)
    return device_count


def install() -> None:
    """Guard this process as a worker parent (idempotent). Call before the preload imports anything."""
    os.environ[NVML_CHECK_ENV] = "1"
    import torch
    import torch.cuda

    STATE.parent_pid = os.getpid()
    lazy_init = _original(torch.cuda._lazy_init)
    guarded_lazy_init = _guarded("torch.cuda._lazy_init", lazy_init)
    # Submodules (torch.cuda.memory, torch.cuda.random, ...) bound the function by name at import.
    for module_name, module in list(sys.modules.items()):
        if module_name != "torch.cuda" and not module_name.startswith("torch.cuda."):
            continue
        if module is not None and _original(getattr(module, "_lazy_init", None)) is lazy_init:
            setattr(module, "_lazy_init", guarded_lazy_init)  # noqa: B010
    for entry in DRIVER_ENTRY_POINTS:
        function = getattr(torch._C, entry, None)
        if function is None:
            continue
        wrap = (
            _guarded_device_count
            if entry == DEVICE_COUNT_ENTRY
            else functools.partial(_guarded, f"torch._C.{entry}")
        )
        setattr(torch._C, entry, wrap(_original(function)))


def installed() -> bool:
    import torch.cuda

    return STATE.parent_pid == os.getpid() and hasattr(torch.cuda._lazy_init, GUARD_MARK)


def report() -> dict[str, Any]:
    """What the guard knows about this process, for the worker's log."""
    import torch

    return {
        "pid": os.getpid(),
        "guarded": installed(),
        "cuda_initialized": bool(torch.cuda.is_initialized()),
        "refused_attempts": len(STATE.attempts),
        NVML_CHECK_ENV: os.environ.get(NVML_CHECK_ENV),
    }


def assert_untouched(when: str) -> None:
    """Raise CudaInParentError if CUDA was initialised in this process or anything tried to."""
    torch = sys.modules.get("torch")
    if torch is None:  # never imported here (a maintenance worker without torch): nothing can have used CUDA
        log.info("cuda guard %s: torch not imported", when)
        return
    if torch.cuda.is_initialized() or STATE.attempts:
        entries = ", ".join(attempt["entry"] for attempt in STATE.attempts) or "outside the guard"
        raise CudaInParentError(
            f"the worker's parent touched CUDA {when} ({entries}); refusing to fork job children from it"
        )
    log.info("cuda guard %s: %s", when, report())


__all__ = ["CudaInParentError", "assert_untouched", "install", "installed", "report"]
