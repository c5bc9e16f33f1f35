"""Test launches of launch/pretrain.py whose ranks are forked from a warm process, and plain
`python SCRIPT ...` / `python -m MODULE ...` commands run the same way (`python`).

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
real `torch.distributed.run`; `MCL_TEST_REAL_TORCHRUN=1` runs every launch under it (and every
`python` command in a fresh interpreter). What the agent
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
import warnings

from conftest import ROOT, free_port, launch_env
from mcl_dist.bench.warm_launch import enter, leave

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
    enter(env, cwd, out_path, err_path)
    sys.argv = [ENTRY, *argv]  # as a torchrun rank sees it
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))  # what torchrun's default of 1 gives
    from mcl_dist.commands.pretrain import main

    leave(lambda: main(argv))


def _run_as_main(argv: list[str], cwd: str) -> int:
    import runpy

    if argv[0] == "-m":
        sys.path.insert(0, cwd)  # as `python -m` does
        sys.argv = [argv[1], *argv[2:]]
        with warnings.catch_warnings():  # a fresh interpreter has not imported it yet; here it is preloaded
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python script.py` does
        runpy.run_path(argv[0], run_name="__main__")
    return 0


def _script(argv: list[str], env: dict, cwd: str, out_path: str, err_path: str) -> None:
    """`python ARGV...` (a script path or `-m module`, then its arguments) run as __main__, the way
    the interpreter runs it, in a child that already has torch and mcl_dist imported."""
    enter(env, cwd, out_path, err_path)
    if "OMP_NUM_THREADS" in env:  # otherwise torch's own default, as in a fresh interpreter
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    leave(lambda: _run_as_main(argv, cwd))


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


def wanted_python(argv: list[str]) -> bool:
    """Whether `python ARGV...` can run forked: anything but a `debug.kill_at` launch (it SIGKILLs
    its launcher, which for a forked child would be the forkserver)."""
    return os.environ.get("MCL_TEST_REAL_TORCHRUN") != "1" and not any(a.startswith("debug.kill_at=") for a in argv)


def python(argv: list[str], cwd: str = ROOT, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python ARGV...` with stdout and stderr captured, as subprocess.run(..., capture_output=True,
    text=True) returns it: forked from the warm forkserver where it can be (wanted_python), a real
    interpreter otherwise. env is the child's whole environment (default: this process's)."""
    env = dict(os.environ if env is None else env)
    if not wanted_python(argv):
        return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        p = _context().Process(target=_script, args=(list(argv), env, str(cwd), out, err))
        p.start()
        p.join(timeout)
        if p.exitcode is None:
            _stop([p])
            raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, open(out).read(), open(err).read())
        read = lambda path: open(path).read() if os.path.exists(path) else ""  # noqa: E731
        return subprocess.CompletedProcess([sys.executable, *argv], p.exitcode, read(out), read(err))
