"""The one place that knows about torchrun: rank/world helpers, backend choice and gathers.

NCCL on GPU, gloo on CPU. A plain `python launch/pretrain.py` (no torchrun environment) runs as
world size 1 without a process group, and every helper here degrades to a no-op.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on any rank (used to stop all ranks together)."""
    t = torch.tensor([1.0 if flag else 0.0])
    if is_distributed() and dist.get_backend() == "nccl":
        t = t.cuda()
    return bool(all_reduce_sum(t).item() > 0)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def kill_launcher() -> None:
    """Tests only: die like a SIGKILLed job (launcher first, then every rank, no clean-up)."""
    import signal

    barrier()
    if rank() == 0 and os.environ.get("TORCHELASTIC_RUN_ID"):
        os.kill(os.getppid(), signal.SIGKILL)
    os._exit(137)


def kill_job_now() -> None:
    """Tests only: SIGKILL the launcher and every rank at once, from wherever this rank is (no
    barrier: the others may be inside a collective), like a job killed mid-write."""
    import signal

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
    import uuid

    _SYNC["dir"] = directory
    _SYNC["token"] = broadcast_object(uuid.uuid4().hex[:12] if rank() == 0 else None)


def run_on_main(name: str, fn, poll_s: float = 0.5):
    """`fn()` on rank 0 only; every rank returns its (JSON-able) result. No collective."""
    import json
    import logging
    import time

    if not is_distributed() or not _SYNC["dir"]:
        if rank() == 0:
            return fn()
        raise RuntimeError("run_on_main needs setup_sync() first")
    marker = os.path.join(_SYNC["dir"], f"{_SYNC['token']}-{name.replace('/', '_')}.json")
    if rank() == 0:
        from mcl_dist.io import write_json

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
