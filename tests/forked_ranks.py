"""Test launches of launch/pretrain.py whose ranks are forked from a warm process.

Why: under torchrun every launch starts its ranks from nothing, and each spends most of its CPU
importing torch, torchvision and open_clip (about 9 s per rank on a loaded 2-core machine, against
14 s for the whole of a tiny two-stage run); the suite launches about a hundred times. Here the
ranks are forked from a multiprocessing forkserver that imported the entry point once per test
worker, then run the same entry point (`mcl_dist.commands.pretrain.main`) with torchrun's
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT): the same code, a real gloo process
group, real DataLoader workers, real files.

What it is not: torchrun's agent. There is no TORCHELASTIC_RUN_ID, no launcher process to kill and
no restart. So a launch with `debug.kill_at` (which SIGKILLs the launcher), and every test of
launcher behaviour (a killed launcher, multi-node rendezvous, exit timing, SLURM), runs under the
real `torch.distributed.run`; `MCL_TEST_REAL_TORCHRUN=1` runs every launch under it. What the agent
does that a test sees is copied: when a rank fails the others get SIGTERM (SIGKILL 30 s later),
and the launch's exit status is 1 when any rank failed. tests/test_kill_points.py compares weights
made this way with weights made under torchrun, killed and resumed: they must be equal.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from conftest import ROOT, free_port, launch_env

ENTRY = "launch/pretrain.py"
_CONTEXT = None


def wanted(args: list[str]) -> bool:
    """Whether a launch of `args` (torchrun's script arguments) can run on forked ranks."""
    if os.environ.get("MCL_TEST_REAL_TORCHRUN") == "1" or not args or args[0] != ENTRY:
        return False
    return not any(a.startswith("debug.kill_at=") for a in args)


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        # imported once in the forkserver; every rank is forked from it with these modules loaded
        _CONTEXT.set_forkserver_preload(["mcl_dist.commands.pretrain", "mcl_dist.pipeline.runner", "forked_ranks"])
    return _CONTEXT


def _rank(argv: list[str], env: dict, cwd: str, out_path: str, err_path: str) -> None:
    """One rank: its output appended to the launch's files (as torchrun passes both ranks' through)."""
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [ENTRY, *argv]  # as a torchrun rank sees it
    # a forkserver child inherits "forkserver" as its start method; a torchrun rank has "fork", and
    # DataLoader workers started through the forkserver would cost seconds each
    multiprocessing.set_start_method("fork", force=True)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))  # what torchrun's default of 1 gives
    from mcl_dist.commands.pretrain import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a rank's crash is its traceback on stderr and a failed exit
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc or 0)


def _stop(procs) -> None:
    for p in procs:
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGTERM)
    end = time.monotonic() + 30
    while time.monotonic() < end and any(p.exitcode is None for p in procs):
        time.sleep(0.05)
    for p in procs:
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
            p.join()


def launch(args: list[str], nproc: int = 2, env: dict | None = None, timeout: float = 900,
           cwd: str = ROOT) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc launch/pretrain.py ARGS...` on forked ranks."""
    base = launch_env(env)
    for key in [k for k in base if k.startswith(("TORCHELASTIC_", "PET_"))]:
        del base[key]
    port = str(free_port())
    ctx = _context()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        procs = []
        for r in range(nproc):
            e = dict(base, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                     GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            p = ctx.Process(target=_rank, args=(list(args[1:]), e, cwd, out, err))
            p.start()
            procs.append(p)
        end = time.monotonic() + timeout
        while any(p.exitcode is None for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):  # torchrun's agent: one failed, stop the rest
                _stop(procs)
                break
            if time.monotonic() > end:
                _stop(procs)
                raise AssertionError(f"launch did not end within {timeout:.0f}s (a hang):\n{open(err).read()[-4000:]}")
            time.sleep(0.05)
        rc = 0 if all(p.exitcode == 0 for p in procs) else 1
        done = subprocess.CompletedProcess(["forked", *args], rc, open(out).read() if os.path.exists(out) else "",
                                           open(err).read() if os.path.exists(err) else "")
        done.rank_codes = [p.exitcode for p in procs]  # what torchrun's failure summary lists (conftest.rank_exit_codes)
        return done
