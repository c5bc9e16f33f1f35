"""Part 4 of the GPU check: our Lloyd k-means vs faiss on one generated matrix, and the memory
bandwidth ours reaches.

    python -m mcl_dist.bench.kmeans_check --args '{"n": 2000000, "d": 512, "k": 100, "iters": 20}' --out km.json

It runs in a process of its own (gpu_check starts it on the first GPU while the other ranks
wait): `mcl_dist.clustering.kmeans` all-reduces over whatever process group exists, and the comparison with
faiss is one device against one device (on a GPU machine without faiss-gpu, faiss-cpu runs on all
cores instead; its time is then reported as `cross_device_time_ratio` and not judged).

The matrix is made on the device in fp16 (what the embed step writes): K=100 random centres plus
0.8 x N(0, I) noise. Both methods start from the same k-means++ centroids (ours, iters=0) and run
exactly `iters` iterations (tol=0); both times include the labels of every row (faiss: train +
one search). faiss's Kmeans API takes host float32 arrays, so faiss-gpu pages the rows to the GPU
in every iteration; that is how faiss-gpu k-means is used. Both inertias are recomputed with one
formula on the same float32 values.

Bandwidth: the bytes our kernels actually move (`DeviceBytes`: every device op's operands read
once and results written once, counted in a second, untimed run from the same init: the fp16
rows, their float32 copies, the score blocks, the pruning bounds), over the timed run's seconds;
the peak is the data-sheet value of the device when known (PEAK_GBS), else a measured
device-to-device copy. Counting only the fp16 input (passes x N x D x 2) would leave out ~10x
the bytes, and a bandwidth target judged on it would be out of reach by construction.

`torch_lloyd` is a plain-torch Lloyd peer on the same device, for machines where faiss-gpu
cannot be installed beside torch (paper_check uses it with, or instead of, faiss-gpu).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from mcl_dist.bench.devtime import seconds_per_call, sync
from mcl_dist.bench.memprobe import InProcess, Polled
from mcl_dist.clustering.kmeans import kmeans
from mcl_dist.core.files import write_json

# data-sheet memory bandwidth in GB/s; first match wins, so the more specific names come first
PEAK_GBS = [("GH200", 4000), ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350),
            ("B200", 8000), ("B100", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
            ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("V100", 900),
            ("RTX 4090", 1008), ("RTX 3090", 936), ("RTX A6000", 768)]


def table_peak(device_name: str) -> float | None:
    return next((float(gbs) for key, gbs in PEAK_GBS if key in device_name), None)


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 5) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written)."""
    a = torch.ones(nbytes // 4, device=device)
    b = torch.empty_like(a)
    return 2 * nbytes / seconds_per_call(lambda: b.copy_(a), device, reps) / 1e9


# in-place ops that write without reading their target, and ops that write only the rows their
# index names (counting the whole target would add passes that never happen)
_WRITE_ONLY = {"copy_", "zero_", "fill_"}
_SPARSE_WRITE = {"scatter_", "scatter_add_", "scatter_reduce_", "index_put_", "index_add_", "index_fill_",
                 "index_copy_", "masked_fill_"}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class DeviceBytes(TorchDispatchMode):
    """with DeviceBytes(device) as b: ...; b.bytes -> bytes read + written by the ops that ran on
    `device`: each tensor operand read once, each result written once. Views, allocations and
    host <-> device copies (PCIe, not device memory) are not counted; an op that writes only
    indexed rows counts those rows."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.bytes = torch.device(device), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.bytes += self._count(func, args, kwargs, out)
        return out

    def _count(self, func, args, kwargs, out) -> int:
        schema, name = func._schema, func._schema.name.split("::")[-1]
        if name.startswith("empty") or any(r.alias_info is not None and not r.alias_info.is_write
                                           for r in schema.returns):
            return 0  # an allocation or a view: no data moves
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type != self.device.type for t in tensors + outs):
            return 0
        written = {id(t) for t in outs}
        if name in _SPARSE_WRITE:
            others = [t for t in tensors[1:]]
            rows = max((t.numel() for t in others), default=0) * tensors[0].element_size()
            return sum(_nbytes(t) for t in others) + rows
        # an out= result or a write-only target is not read; an in-place target is
        reads = [t for t in tensors if id(t) not in written or (name.endswith("_") and name not in _WRITE_ONLY)]
        return sum(_nbytes(t) for t in reads) + sum(_nbytes(t) for t in outs)


def device_bytes(fn, device: torch.device) -> int:
    with DeviceBytes(device) as counter:
        fn()
    return counter.bytes


@torch.no_grad()
def torch_lloyd(x: torch.Tensor, init: torch.Tensor, iters: int, device: torch.device, spherical: bool = True,
                chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Lloyd in torch on `device`, as a user without faiss-gpu would write it: the rows copied
    to the device once, float32 math per block (scores by one matmul, sums by index_add_), `iters`
    updates from `init` and a last assignment; an empty cluster keeps its centroid.
    Returns (centroids, labels)."""
    x = x.to(device)
    c = init.to(device, torch.float32)
    k, d = c.shape
    if device.type == "cpu":
        chunk = min(chunk, max(256, (1 << 20) // d))
    labels = torch.empty(x.shape[0], dtype=torch.long, device=device)
    for it in range(iters + 1):
        update = it < iters
        sums, counts = torch.zeros(k, d, device=device), torch.zeros(k, device=device)
        cc = None if spherical else (c * c).sum(1)
        for s in range(0, x.shape[0], chunk):
            xc = x[s: s + chunk].float()
            if spherical:
                xc = F.normalize(xc, dim=1)
                lab = (xc @ c.T).argmax(1)
            else:
                lab = torch.addmm(cc, xc, c.T, alpha=-2).argmin(1)
            labels[s: s + chunk] = lab
            if update:
                sums.index_add_(0, lab, xc)
                counts += torch.bincount(lab, minlength=k)
        if update:
            new = sums / counts.clamp_min(1)[:, None]
            new = F.normalize(new, dim=1) if spherical else new
            c = torch.where(counts[:, None] > 0, new, c)
    return c, labels


def make_matrix(n: int, d: int, k_true: int, seed: int, device: torch.device, chunk: int = 1 << 18) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(k_true, d, generator=g, device=device)
    x = torch.empty(n, d, dtype=torch.float16, device=device)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        lab = torch.randint(k_true, (m,), generator=g, device=device)
        x[s: s + m] = centres[lab] + 0.8 * torch.randn(m, d, generator=g, device=device)
    return x


def inertia(x: torch.Tensor, c, chunk: int = 1 << 16) -> float:
    """Sum over all rows of the squared distance to the nearest centroid (float64 total)."""
    c = torch.as_tensor(c).to(x.device, torch.float32)
    cc, total = (c * c).sum(1), 0.0
    for s in range(0, x.shape[0], chunk):
        xc = x[s: s + chunk].float()
        best = torch.addmm(cc, xc, c.T, alpha=-2).min(1).values + (xc * xc).sum(1)
        total += float(best.clamp_min(0).sum(dtype=torch.float64))
    return total


def run_faiss(x: torch.Tensor, init: torch.Tensor, iters: int, seed: int, device: torch.device) -> dict:
    try:
        import faiss
    except ImportError:
        return {"faiss": None, "faiss_error": "faiss is not installed (pip install faiss-gpu, or faiss-cpu on CPU)"}
    gpu = device.type == "cuda" and hasattr(faiss, "StandardGpuResources")
    # no faiss-gpu on a GPU machine: faiss-cpu on every core is still the peer a user would have;
    # its time is reported beside ours but not judged (one device against another)
    note = "" if gpu or device.type == "cpu" else f" ({faiss.omp_get_max_threads()} CPU threads; no faiss-gpu)"
    n, d = x.shape
    k = init.shape[0]
    xf = x.float().cpu().numpy()
    fk = faiss.Kmeans(d, k, niter=iters, seed=seed, max_points_per_centroid=n // k + 1, gpu=1 if gpu else False)
    if gpu:
        torch.cuda.empty_cache()  # so that the device-wide probe sees faiss's own allocations
    with (Polled(device) if gpu else InProcess(torch.device("cpu"))) as mem:
        t = time.perf_counter()
        fk.train(xf, init_centroids=init.numpy())
        fk.index.search(xf, 1)
        sec = time.perf_counter() - t
    kind = "faiss-gpu" if gpu else "faiss-cpu"
    return {"faiss": f"{kind} {faiss.__version__}{note}", "faiss_device": "cuda" if gpu else "cpu", "faiss_s": sec,
            "faiss_inertia": inertia(x, fk.centroids), "faiss_peak_mem_gb": mem.gib}


def run(n: int, d: int, k: int, iters: int, device: str, seed: int = 0, copy_bytes: int = 1 << 30) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    x = make_matrix(n, d, 100, seed, dev)
    init = kmeans(x, k, iters=0, seed=seed, device=dev).centroids  # our k-means++ seeds, for both
    sync(dev)
    with InProcess(dev) as mem:
        t = time.perf_counter()
        res = kmeans(x, k, iters=iters, tol=0, init=init, device=dev)
        sync(dev)
        ours_s = time.perf_counter() - t
    # what the kernels move, counted in a second run from the same init (the count slows it)
    moved = device_bytes(lambda: kmeans(x, k, iters=iters, tol=0, init=init, device=dev), dev)
    bandwidth = moved / ours_s / 1e9
    copy_gbs = copy_bandwidth(dev, copy_bytes)
    peak = table_peak(name)
    out = {"n": n, "d": d, "k": k, "iters": iters, "device_name": name, "ours_s": ours_s,
           "ours_inertia": inertia(x, res.centroids), "ours_peak_mem_gb": mem.gib, "bandwidth_gbs": bandwidth,
           "copy_bandwidth_gbs": copy_gbs, "peak_bandwidth_gbs": peak if peak else copy_gbs,
           "peak_source": "data sheet" if peak else "measured device copy"}
    out["bandwidth_fraction"] = bandwidth / out["peak_bandwidth_gbs"]
    out.update(run_faiss(x, init, iters, seed, dev))
    if out.get("faiss_s"):
        same_device = out["faiss_device"] == dev.type
        out["time_ratio" if same_device else "cross_device_time_ratio"] = ours_s / out["faiss_s"]
        out["inertia_ratio"] = out["ours_inertia"] / out["faiss_inertia"]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--args", required=True, help="JSON object: the keyword arguments of run()")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    write_json(run(**json.loads(a.args)), a.out)


if __name__ == "__main__":
    main()
