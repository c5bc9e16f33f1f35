"""Guards of a run directory: one launch at a time, and no orphan files from a killed one.

The lock is `<run_dir>/run.lock` (host, pid, SLURM job), created with O_EXCL by rank 0. A second
launch on the same directory is refused and told who holds it. A lock left by a killed launch is
taken over when its holder is provably gone: the same host and a pid that no longer runs (or only
as a zombie: in a container whose PID 1 is no init, a killed launch's ranks stay unreaped), or the
same SLURM job (a requeued job restarts under its own id, possibly on another node).

Temporary files (`.NAME.XXXX.tmp`, see mcl_dist/core/files.py) that a kill left behind are removed at
start, under the lock, so a live writer's files are never touched.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time

from mcl_dist.config.schema import ConfigError
from mcl_dist.core.files import fsync_dir
from mcl_dist.core.layout import lock_path, sync_dir

log = logging.getLogger("mcl_dist")


class RunDirBusy(ConfigError):
    pass


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
            "started_at": time.time()}


def _gone(other: dict) -> bool:
    me = _holder()
    if other.get("slurm_job") and other.get("slurm_job") == me["slurm_job"]:
        return True
    if other.get("host") != me["host"]:
        return False  # cannot see another machine's processes
    try:
        os.kill(int(other.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return int(other.get("pid", 0)) <= 0 or _zombie(int(other["pid"]))


def _zombie(pid: int) -> bool:
    """A process that has exited and waits to be reaped: signal 0 still reaches it, but it holds nothing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def acquire(run_dir: str) -> str:
    """Create the lock or raise RunDirBusy naming the holder; returns the lock's path."""
    path = lock_path(run_dir)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read(path)
            if other is None:  # just created by the other launch and not yet written: look again
                time.sleep(0.5)
                if not os.path.exists(path):
                    continue
                other = _read(path) or {"host": "?", "pid": "?", "started_at": 0}
            if _gone(other):
                log.warning("%s: taking over the lock of a launch that is gone (host %s, pid %s)", path,
                            other.get("host"), other.get("pid"))
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("started_at", 0)))
            raise RunDirBusy(f"{run_dir} is in use by another launch (host {other.get('host')}, pid "
                             f"{other.get('pid')}, started {since}); wait for it to end or use another "
                             f"--run-dir. If that launch is dead, delete {path}")
        with os.fdopen(fd, "w") as f:
            json.dump(_holder(), f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(run_dir)
        return path
    raise RunDirBusy(f"{path}: could not take the lock (another launch keeps creating it)")


def _read(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def release(path: str) -> None:
    """Remove the lock if this process still holds it."""
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        # this launch's sync markers go with its lock: a launch that found everything done leaves no trace
        shutil.rmtree(sync_dir(os.path.dirname(path)), ignore_errors=True)
        os.remove(path)
    except (OSError, ValueError):
        pass


def sweep(run_dir: str) -> int:
    """Remove temporary files a killed launch left behind, and old sync markers; returns the count."""
    removed = 0
    for root, dirs, files in os.walk(run_dir):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(os.path.join(root, name))
                removed += 1
    shutil.rmtree(sync_dir(run_dir), ignore_errors=True)
    if removed:
        log.warning("%s: removed %d temporary file%s left by an interrupted launch", run_dir, removed,
                    "s" if removed != 1 else "")
    return removed
