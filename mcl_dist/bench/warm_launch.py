"""One-process runs of the pipeline forked from a process that imported it once.

A fresh `python launch/pretrain.py ...` spends about 10 s of CPU importing torch, torchvision and
open_clip before it does anything; a benchmark that runs dozens of small arms (the suppression
smoke: 20-30 s each) pays that again for every one. Here a multiprocessing forkserver imports
the entry point once; each run is a child forked from it that sets its own environment, working
directory and log, then calls the same `mcl_dist.commands.pretrain.main` a fresh interpreter would.

The forkserver never computes anything, so it has no threads a fork could break; the child sets
torch's thread count from its OMP_NUM_THREADS (a fresh process reads it at start) and the fork
start method for its DataLoader workers (a forkserver child inherits "forkserver", which would
start every worker from scratch). Multi-rank runs still go through torchrun: only its agent
restarts and rendezvous are real there.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback

import torch

from mcl_dist.commands.pretrain import main as pretrain_main

ENTRY = "mcl_dist.commands.pretrain"


def enter(env: dict, cwd: str, out_path: str, err_path: str) -> None:
    """Make a forked child what a fresh process would be: stdout and stderr appended to their files
    (the same path for both: one log), this environment and working directory, and "fork" as the
    start method (a forkserver child inherits "forkserver", which would start every DataLoader
    worker from scratch). tests/forked_ranks.py enters its ranks and commands the same way."""
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    multiprocessing.set_start_method("fork", force=True)


def leave(run) -> None:
    """End the child with the status `python` would give: run()'s return value, a SystemExit's
    code, or 1 with the traceback printed for an uncaught exception."""
    try:
        rc = run()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - as a fresh interpreter: the traceback on stderr, exit 1
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc or 0)


def _child(argv: list[str], env: dict, cwd: str, log_path: str) -> None:
    enter(env, cwd, log_path, log_path)
    if env.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = ["launch/pretrain.py", *argv]
    leave(lambda: pretrain_main(argv))


class WarmRun:
    """A run forked from the warm process, with the part of subprocess.Popen's interface a
    benchmark polls: poll(), returncode (negative: killed by that signal), kill(), wait()."""

    def __init__(self, process) -> None:
        self._p = process

    @property
    def returncode(self):
        return self._p.exitcode

    def poll(self):
        return self._p.exitcode

    def wait(self, timeout=None):
        self._p.join(timeout)
        return self._p.exitcode

    def kill(self) -> None:
        if self._p.exitcode is None:
            os.kill(self._p.pid, signal.SIGKILL)


class WarmLauncher:
    """`python launch/pretrain.py ARGS` as WarmRun children of one forkserver (started on first use)."""

    def __init__(self) -> None:
        self._ctx = None

    def start(self, argv: list[str], cwd: str, env: dict, log_path: str) -> WarmRun:
        """argv: the entry point's arguments (what follows launch/pretrain.py); output appended to log_path."""
        if self._ctx is None:
            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload([ENTRY, __name__])
        p = self._ctx.Process(target=_child, args=(list(argv), dict(env), str(cwd), str(log_path)))
        p.start()
        return WarmRun(p)
