"""Peak memory of one part of a check, in GiB: GPU memory on a GPU, resident memory on a CPU.

Two kinds of part need two probes:
- in this process (`InProcess`): torch's own counter, `torch.cuda.max_memory_allocated`, reset at
  the start; on CPU, the process's resident set sampled by a thread (ru_maxrss cannot be reset).
- in child processes (`Polled`: torchrun launches, faiss): a thread samples, every `interval`
  seconds, the memory in use on the device (`cudaMemGetInfo`, all processes; faiss allocates
  outside torch's allocator) or the summed resident set of this process's descendants, and
  reports the peak above what was in use when the probe started.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

import torch

GIB = float(1 << 30)


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0  # the process ended between listing and reading


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # the command may contain spaces
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def children_rss() -> int:
    return sum(_rss_bytes(p) for p in _descendants(os.getpid()))


def device_used(device: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return total - free


class _Sampler:
    """Calls `read` every `interval` s in a daemon thread; keeps the maximum and the series."""

    def __init__(self, read: Callable[[], int], interval: float):
        self.read, self.interval, self.peak = read, interval, 0
        self.series: list[tuple[float, int]] = []  # (time.time(), bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        value = self.read()
        self.series.append((time.time(), value))
        self.peak = max(self.peak, value)

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                self._sample()
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class InProcess:
    """with InProcess(device) as m: ...; m.gib -> peak GiB of this process during the block."""

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.device, self.interval, self.gib = device, interval, None
        self._sampler: Optional[_Sampler] = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._sampler = _Sampler(lambda: _rss_bytes(os.getpid()), self.interval).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gib = torch.cuda.max_memory_allocated(self.device) / GIB
        else:
            self._sampler.__exit__()
            self.gib = self._sampler.peak / GIB


class Polled:
    """with Polled(device) as m: run children; m.gib -> peak GiB they added (device or RSS)."""

    def __init__(self, device: torch.device, interval: float = 0.1):
        self.device, self.interval, self.gib = device, interval, None
        self._read = (lambda: device_used(device)) if device.type == "cuda" else children_rss
        self._base = 0
        self._sampler: Optional[_Sampler] = None

    def __enter__(self):
        self._base = self._read()
        self._sampler = _Sampler(self._read, self.interval).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._sampler.__exit__()
        self.gib = max(0, self._sampler.peak - self._base) / GIB

    def peak_between(self, start: float, end: float) -> Optional[float]:
        """Peak GiB above the start level in a window of wall-clock time (e.g. one pipeline step
        from manifest.json's started_at / finished_at); None if no sample fell inside."""
        inside = [v for t, v in self._sampler.series if start <= t <= end]
        return max(0, max(inside) - self._base) / GIB if inside else None

