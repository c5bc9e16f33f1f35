"""The one place that knows about torchrun: rank/world helpers, backend choice and gathers.

NCCL on GPU, gloo on CPU. A plain `python launch/pretrain.py` (no torchrun environment) runs as
world size 1 without a process group, and every helper here degrades to a no-op.

Gathers concatenate along dim 0 in rank order. Ranks may hold different numbers of rows (bad
samples are dropped after loading): pass every rank's length (`gather_sizes`) and the rows are
padded to the longest before the collective and cut back after.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from mcl_dist.core.files import write_json


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


def init_distributed(device: str = "auto", timeout_min: int = 30) -> DistInfo:
    """Read torchrun's environment and start the process group once."""
    global _INFO
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        die_with_launcher()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_min))
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    return _INFO


def die_with_launcher() -> None:
    """Under torchrun, a rank runs in a session of its own: when the launcher is SIGKILLed (a job
    killed by its process group), nothing would stop the ranks, which would go on training and
    hold the run lock. Ask Linux to SIGKILL this rank when its parent dies (PR_SET_PDEATHSIG);
    what it leaves is what any kill leaves (temp files swept, lock taken over, resume)."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the launcher was already gone before the call: re-parented to init
        os._exit(137)


def ensure_process_group(device: torch.device) -> None:
    """A process group even for one process (DeepSpeed needs one; our world-size-1 runs have none)."""
    for key in ("RANK", "LOCAL_RANK"):  # DeepSpeed reads them even for one process
        os.environ.setdefault(key, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        dist.init_process_group(backend, init_method="env://", rank=0, world_size=1)
        return
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


def free_port() -> int:
    """A TCP port free on this host now (for a world of one, a test's or a benchmark's torchrun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def info() -> DistInfo:
    return _INFO


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj):
    """Python objects from every rank, in rank order (small metadata only)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def comm_device() -> torch.device:
    """Where a tensor must be for a collective: the GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda")
    return torch.device("cpu")


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's number of rows, in rank order (`device`: where the collective runs)."""
    if not is_distributed():
        return [n]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


def _padded(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    pad = max(sizes) - t.shape[0]
    return torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))]) if pad else t


def gather_no_grad(t: torch.Tensor, sizes: Optional[list[int]] = None) -> torch.Tensor:
    """`t` from every rank; gradient flows only into this rank's own rows (open_clip's default).

    `sizes`: every rank's row count when they may differ (None: all as long as `t`)."""
    if not is_distributed():
        return t
    sizes = sizes or [t.shape[0]] * world_size()
    padded = _padded(t, sizes)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    parts[rank()] = padded  # the local block keeps its gradient
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def gather_with_grad(t: torch.Tensor, sizes: Optional[list[int]] = None) -> torch.Tensor:
    """`t` from every rank, with gradient back to every rank's rows (open_clip's --gather-with-grad)."""
    if not is_distributed():
        return t
    sizes = sizes or [t.shape[0]] * world_size()
    with warnings.catch_warnings():  # deprecated in 2.14 in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        parts = list(dist_nn.all_gather(_padded(t, sizes)))
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on any rank (used to stop all ranks together)."""
    t = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    return bool(all_reduce_sum(t).item() > 0)


# gloo's words when the other end of a pair went away (its process ended)
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective or store call that failed because another rank's process
    ended: that rank reports its own error, so this one should not report a second."""
    while exc is not None:  # also when a step re-raised it as an error of its own
        if isinstance(exc, getattr(dist, "DistNetworkError", ())) or \
                (isinstance(exc, RuntimeError) and any(s in str(exc) for s in _PEER_GONE)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def kill_launcher() -> None:
    """Tests only: die like a SIGKILLed job (launcher first, then every rank, no clean-up)."""
    barrier()
    if rank() == 0 and os.environ.get("TORCHELASTIC_RUN_ID"):
        os.kill(os.getppid(), signal.SIGKILL)
    os._exit(137)


def kill_job_now() -> None:
    """Tests only: SIGKILL the launcher and every rank at once, from wherever this rank is (no
    barrier: the others may be inside a collective), like a job killed mid-write."""
    launcher = os.getppid()
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        siblings = []
        for entry in os.listdir("/proc"):  # find them before the launcher dies and they are re-parented
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == launcher and int(entry) != os.getpid():
                        siblings.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        os.kill(launcher, signal.SIGKILL)
        for pid in siblings:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    os._exit(137)


# -- waiting for rank-0-only work outside any collective --------------------------------------
# Long rank-0 work (index build, labels, evaluation) would otherwise leave the other ranks in a
# barrier that times out after dist.timeout_min. They poll a marker file instead; if rank 0 dies,
# torchrun stops them.
_SYNC: dict = {"dir": "", "token": ""}


def setup_sync(directory: str) -> None:
    """Call on every rank once: agree on a per-launch token so old markers never count."""
    _SYNC["dir"] = directory
    _SYNC["token"] = broadcast_object(uuid.uuid4().hex[:12] if rank() == 0 else None)


def run_on_main(name: str, fn, poll_s: float = 0.5):
    """`fn()` on rank 0 only; every rank returns its (JSON-able) result. No collective."""
    if not is_distributed() or not _SYNC["dir"]:
        if rank() == 0:
            return fn()
        raise RuntimeError("run_on_main needs setup_sync() first")
    marker = os.path.join(_SYNC["dir"], f"{_SYNC['token']}-{name.replace('/', '_')}.json")
    if rank() == 0:
        result = fn()
        write_json({"result": result}, marker)
        return result
    t0, told = time.time(), 0
    while not os.path.exists(marker):
        time.sleep(poll_s)
        if time.time() - t0 > 600 * (told + 1):
            told += 1
            logging.getLogger("mcl_dist").warning("rank %d: waiting for rank 0 (%s) for %d min", rank(), name,
                                                  10 * told)
    with open(marker) as f:
        return json.load(f)["result"]
