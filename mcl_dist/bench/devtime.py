"""The time of one operation on a device, for the GPU check's parts.

CUDA kernels run asynchronously, so a host clock alone would time their launches: the device is
synchronised before and after the timed calls. One untimed call first pays for kernel selection
and the allocator's first requests."""
from __future__ import annotations

import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    """Mean seconds of `reps` calls of fn after one warm-up call."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / reps
