"""Progress of long loops: a tqdm bar on a terminal, a plain line now and then anywhere else.

A SLURM job's stderr is a file. tqdm redraws its bar with a carriage return, and every redraw
becomes a line of that file: about one line per training step, so a day's run writes a log no one
can read. Where the stream is not a terminal, `progress` prints one whole line every `every_s`
seconds, or each time the count crosses a multiple of `every_n` (training passes
`train.log_every`, so the line carries the loss just logged), and one at the end.

Every progress bar of mcl_dist goes through `progress` or `track`; `close_bars` clears an open bar
before an error line, so that the line starts a line of its own.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

from tqdm import tqdm

EVERY_S = 60.0  # a plain line at least this often in a log: enough to see a job is alive
CLOCK = time.monotonic


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class LineProgress:
    """tqdm's update / set_postfix / close, printing whole lines (see the module docstring)."""

    def __init__(self, total: Optional[int], desc: str, unit: str, initial: int, stream: TextIO,
                 every_s: float, every_n: Optional[int], clock: Callable[[], float]):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.every_s, self.every_n, self.clock = every_s, every_n, clock
        self.n = self.start_n = self.last_n = initial
        self.t0 = self.last_t = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        crossed = bool(self.every_n) and self.n // self.every_n > self.last_n // self.every_n
        if crossed or now - self.last_t >= self.every_s:
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values  # shown with the next line, not a line of its own

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._line(self.clock())
        self.closed = True

    def _line(self, now: float) -> None:
        done = f"{self.n:,}/{self.total:,} {self.unit}" if self.total else f"{self.n:,} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = now - self.t0
        parts = [f"{self.desc}: {done}", f"{_duration(elapsed)} elapsed"]
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"{_duration((self.total - self.n) / rate)} left")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        print(", ".join(parts), file=self.stream, flush=True)
        self.last_n, self.last_t = self.n, now


class _Off:
    """A progress that shows nothing (other ranks, --quiet)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: Optional[int] = None, *, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
             stream: Optional[TextIO] = None, every_s: Optional[float] = None, every_n: Optional[int] = None,
             clock: Optional[Callable[[], float]] = None) -> Any:
    """A bar on a terminal, plain lines elsewhere, nothing when not `enabled`; call update(n),
    set_postfix(**values) and close(). `stream` (default stderr), `every_s` (default EVERY_S) and
    `clock` (default CLOCK) are read at the call, so that tests can set them for a whole run."""
    if not enabled:
        return _Off()
    stream = stream if stream is not None else sys.stderr
    if is_tty(stream):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial, stream, EVERY_S if every_s is None else every_s, every_n,
                        clock or CLOCK)


def track(items: Iterable, total: Optional[int] = None, **kw: Any) -> Iterator:
    """Yield `items`, counting each one (progress's keywords)."""
    bar = progress(total, **kw)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def close_bars() -> None:
    """Close the terminal bars still open, so that the next line is not printed after a bar."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
