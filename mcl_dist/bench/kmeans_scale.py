"""k-means at the paper's scale on the path the pipeline ships, against faiss from the same init.

    python tools/bench_kmeans_scale.py --n 10000000 --d 768 --k 10 --iters 20 --device cuda

The path is `steps.kmeans_step`'s: a host (CPU) fp16 matrix, as `load_share` returns the embed
step's parts, handed to `mcl_dist.clustering.kmeans.kmeans(..., spherical=True, backend="torch",
device=...)`. The matrix is made like embeddings are: K_true=100 random directions plus noise,
L2-normalised, fp16. Both methods start from the same centroids (our k-means++ seeding,
iters=0) and run exactly `iters` iterations (ours tol=0); faiss runs `faiss.Kmeans(spherical=True)`
on the float32 host copy its API takes, plus one search for the labels. One formula scores both:
the spherical objective sum(1 - max cos) over every row, in float64.

Bandwidth (GPU): ours reads the fp16 matrix once per pass (the input check and iters + 1
assignments); achieved GB/s = passes x N x D x 2 / (time - the one host-to-device copy, timed on
its own), against the device's copy bandwidth measured here. Without faiss-gpu on a GPU machine,
faiss-cpu on every core runs instead on `faiss_rows` rows and `faiss_iters` iterations (it would
take minutes at 10M); its time is then reported per iteration per million rows and not judged.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from mcl_dist.bench.devtime import sync
from mcl_dist.clustering.kmeans import kmeans


def embeddings(n: int, d: int, seed: int, device: torch.device, k_true: int = 100, chunk: int = 1 << 18) -> torch.Tensor:
    """A host fp16 (n, d) matrix of unit rows around k_true directions (made on `device`)."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k_true, d, generator=g, device=device), dim=1)
    out = torch.empty(n, d, dtype=torch.float16)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        lab = torch.randint(k_true, (m,), generator=g, device=device)
        rows = centres[lab] + 0.05 * torch.randn(m, d, generator=g, device=device)
        out[s: s + m] = torch.nn.functional.normalize(rows, dim=1).half().cpu()
    return out


def objective(x: torch.Tensor, c, device: torch.device, chunk: int = 1 << 17) -> float:
    """Spherical k-means objective: sum over rows of 1 - max_j cos(x_i, c_j), float64 total."""
    c = torch.nn.functional.normalize(torch.as_tensor(c).to(device, torch.float32), dim=1)
    total = 0.0
    for s in range(0, x.shape[0], chunk):
        xc = torch.nn.functional.normalize(x[s: s + chunk].to(device).float(), dim=1)
        total += float((1 - (xc @ c.T).amax(1)).sum(dtype=torch.float64))
    return total


def h2d_seconds(x: torch.Tensor, device: torch.device) -> float:
    """One host-to-device copy of x (what k-means does once on a GPU)."""
    if device.type != "cuda":
        return 0.0
    sync(device)
    t = time.perf_counter()
    y = x.to(device)
    sync(device)
    del y
    return time.perf_counter() - t


def device_copy_gbs(device: torch.device, nbytes: int = 1 << 30, reps: int = 5) -> float | None:
    """Measured device-to-device copy bandwidth (bytes read + written), the ceiling we judge by."""
    if device.type != "cuda":
        return None
    a = torch.ones(nbytes // 4, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - t) / 1e9


def run_faiss(x: torch.Tensor, init: torch.Tensor, iters: int, seed: int, device: torch.device,
              rows: int = 0, faiss_iters: int = 0) -> dict:
    try:
        import faiss
    except ImportError:
        return {"faiss": None, "faiss_error": "faiss is not installed"}
    gpu = device.type == "cuda" and hasattr(faiss, "StandardGpuResources")
    subset = device.type == "cuda" and not gpu and (rows or faiss_iters)  # faiss-cpu beside a GPU: a slice
    n = min(rows, x.shape[0]) if subset and rows else x.shape[0]
    it = faiss_iters if subset and faiss_iters else iters
    xf = x[:n].float().numpy()
    k, d = init.shape
    fk = faiss.Kmeans(d, k, niter=it, seed=seed, spherical=True, max_points_per_centroid=n // k + 1,
                      gpu=1 if gpu else False)
    t = time.perf_counter()
    fk.train(xf, init_centroids=init.numpy())
    fk.index.search(xf, 1)
    sec = time.perf_counter() - t
    kind = "faiss-gpu" if gpu else f"faiss-cpu ({faiss.omp_get_max_threads()} threads)"
    out = {"faiss": f"{kind} {faiss.__version__}", "faiss_device": "cuda" if gpu else "cpu", "faiss_rows": n,
           "faiss_iters": it, "faiss_s": sec, "faiss_s_per_iter_per_mrow": sec / (it + 1) / (n / 1e6)}
    if n == x.shape[0] and it == iters:
        out["faiss_objective"] = objective(x, fk.centroids, device)
    return out


def run(n: int, d: int, k: int, iters: int, device: str, seed: int = 0, faiss_rows: int = 0,
        faiss_iters: int = 0, skip_faiss: bool = False, x: torch.Tensor | None = None) -> dict:
    """`x`: a host matrix from `embeddings` to reuse (n and d are then its shape)."""
    dev = torch.device(device)
    x = embeddings(n, d, seed, dev) if x is None else x
    n, d = x.shape
    init = kmeans(x, k, iters=0, seed=seed, spherical=True, device=dev).centroids  # the shared seeding
    copy_s = h2d_seconds(x, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t = time.perf_counter()
    res = kmeans(x, k, iters=iters, tol=0, seed=seed, spherical=True, init=init, backend="torch", device=dev)
    sync(dev)
    ours_s = time.perf_counter() - t
    passes, nbytes = iters + 2, x.numel() * x.element_size()
    out = {"n": n, "d": d, "k": k, "iters": iters, "device": dev.type,
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "cpu_threads": torch.get_num_threads(), "path": "host fp16 input, spherical, backend torch (steps.kmeans_step)",
           "ours_s": ours_s, "ours_s_per_iter_per_mrow": ours_s / (iters + 1) / (n / 1e6),
           "ours_objective": objective(x, res.centroids, dev), "h2d_copy_s": copy_s,
           "ours_peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
    if dev.type == "cuda":
        out["bandwidth_gbs"] = passes * nbytes / max(ours_s - copy_s, 1e-9) / 1e9
        out["copy_bandwidth_gbs"] = device_copy_gbs(dev)
        out["bandwidth_fraction"] = out["bandwidth_gbs"] / out["copy_bandwidth_gbs"]
    if not skip_faiss:
        out.update(run_faiss(x, init, iters, seed, dev, faiss_rows, faiss_iters))
    if out.get("faiss_objective"):
        out["objective_ratio"] = out["ours_objective"] / out["faiss_objective"]
        same = out["faiss_device"] == dev.type
        out["time_ratio" if same else "cross_device_time_ratio"] = ours_s / out["faiss_s"]
    elif out.get("faiss_s"):
        out["cross_device_per_row_iter_ratio"] = out["ours_s_per_iter_per_mrow"] / out["faiss_s_per_iter_per_mrow"]
    return out
