"""Benchmark mcl_dist.clustering.kmeans against faiss and scikit-learn on one synthetic data set.

Data: K centres drawn from N(0, I); each point is a random centre plus 0.8 * N(0, I) noise.
Rows are generated in fixed blocks with their own seeds, so any rank can make its own half.

    python tools/bench_kmeans.py                      # N=1e6, D=256, K=100, 20 iterations
    python tools/bench_kmeans.py --n 100000 --skip-sklearn

Rows: ours on 1 rank and on 2 gloo ranks (this script under torchrun, each rank half the rows)
and faiss on all N points, all three from the same k-means++ initial centroids and all running
exactly --iters iterations (tol=0); faiss's default subsampled training (256 points per
centroid); scikit-learn MiniBatchKMeans with the reference implementation's settings against
ours with its default init and tolerance. Times include the labels of all N points (faiss:
train + one search; sklearn: fit, which labels every point). Every inertia is recomputed here
on all N points with one formula. The last line compares our best configuration with faiss.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from mcl_dist.clustering.kmeans import kmeans
from mcl_dist.core.distributed import free_port
from mcl_dist.core.files import load_npz, save_npz, write_json

BLOCK = 65536


def make_data(n: int, d: int, k: int, seed: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Rows [start, stop) of the data set; the same rows whatever range is asked for."""
    stop = n if stop is None else stop
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(stop - start, d)
    for b in range(start // BLOCK, math.ceil(stop / BLOCK)):
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + b + 1)
        rows = centres[torch.randint(k, (hi - lo,), generator=g)] + 0.8 * torch.randn(hi - lo, d, generator=g)
        s, e = max(lo, start), min(hi, stop)
        out[s - start: e - start] = rows[s - lo: e - lo]
    return out


def inertia(x: torch.Tensor, c) -> float:
    """Sum over all rows of the squared distance to the nearest centroid (float64 total)."""
    c = torch.as_tensor(np.asarray(c), dtype=torch.float32)
    cc, total = (c * c).sum(1), 0.0
    for s in range(0, x.shape[0], BLOCK):
        xc = x[s: s + BLOCK]
        best = torch.addmm(cc, xc, c.T, alpha=-2).min(1).values + (xc * xc).sum(1)
        total += float(best.clamp_min(0).sum(dtype=torch.float64))
    return total


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def worker(tmp: str) -> None:
    """One rank under torchrun: k-means on this rank's half from the parent's init centroids."""
    import torch.distributed as dist

    with open(os.path.join(tmp, "args.json")) as f:
        args = argparse.Namespace(**json.load(f))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    lo, hi = args.n * rank // world, args.n * (rank + 1) // world
    x = make_data(args.n, args.d, args.k, args.seed, lo, hi)
    init = torch.from_numpy(load_npz(os.path.join(tmp, "init.npz"))["c"])
    dist.barrier()
    sec, res = timed(lambda: kmeans(x, args.k, iters=args.iters, tol=0, init=init, device="cpu"))
    if rank == 0:
        save_npz(os.path.join(tmp, "out.npz"), c=res.centroids.numpy())
        write_json({"time": sec, "threads": torch.get_num_threads()}, os.path.join(tmp, "out.json"))
    dist.destroy_process_group()


def two_ranks(args, init: torch.Tensor) -> tuple[float, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        save_npz(os.path.join(tmp, "init.npz"), c=init.numpy())
        write_json(vars(args), os.path.join(tmp, "args.json"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), os.path.abspath(__file__)]  # torchrun would misread our flags: env
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, torch.get_num_threads() // 2)), BENCH_KMEANS_WORKER=tmp)
        subprocess.run(cmd, check=True, env=env)
        with open(os.path.join(tmp, "out.json")) as f:
            return json.load(f)["time"], load_npz(os.path.join(tmp, "out.npz"))["c"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device for our single-rank runs")
    p.add_argument("--skip-sklearn", action="store_true")
    if os.environ.get("BENCH_KMEANS_WORKER"):
        return worker(os.environ["BENCH_KMEANS_WORKER"])
    args = p.parse_args()

    import faiss

    n, d, k, iters = args.n, args.d, args.k, args.iters
    print(f"data: N={n} D={d} K={k} iters={iters} seed={args.seed}; torch threads {torch.get_num_threads()}, "
          f"faiss threads {faiss.omp_get_max_threads()}", flush=True)
    x = make_data(n, d, k, args.seed)
    xn = x.numpy()
    init = kmeans(x, k, iters=0, seed=args.seed, device="cpu").centroids  # our k-means++ seeds
    rows = []  # (name, seconds, inertia, same_init)

    def add(name, sec, cent, same_init):
        rows.append((name, sec, inertia(x, cent), same_init))
        print(f"  done: {name} {sec:.2f}s", flush=True)

    sec, r = timed(lambda: kmeans(x, k, iters=iters, tol=0, init=init, device=args.device))
    add(f"ours 1 rank ({args.device}), same init", sec, r.centroids, True)
    if torch.device(args.device).type == "cpu":
        sec, r = timed(lambda: kmeans(x, k, iters=iters, tol=0, init=init, backend="faiss", device="cpu"))
        add("ours 1 rank, faiss search backend, same init", sec, r.centroids, True)
        sec, c = two_ranks(args, init)
        add("ours 2 ranks (gloo, 1 thread each), same init", sec, c, True)

    fk = faiss.Kmeans(d, k, niter=iters, seed=args.seed, max_points_per_centroid=n // k + 1)
    train, _ = timed(lambda: fk.train(xn, init_centroids=init.numpy()))
    label, _ = timed(lambda: fk.index.search(xn, 1))
    add("faiss.Kmeans all N points, same init", train + label, fk.centroids, True)
    faiss_row = rows[-1]
    fs = faiss.Kmeans(d, k, niter=iters, seed=args.seed)
    sec, _ = timed(lambda: (fs.train(xn), fs.index.search(xn, 1)))
    add("faiss.Kmeans default (256 pts/centroid)", sec, fs.centroids, False)

    sec, r = timed(lambda: kmeans(x, k, iters=iters, seed=args.seed, device=args.device))
    add(f"ours default (k-means++, tol 1e-4, {r.iterations} it)", sec, r.centroids, False)
    ours_default = rows[-1]
    if not args.skip_sklearn:
        from sklearn.cluster import MiniBatchKMeans

        mb = MiniBatchKMeans(n_clusters=k, init="k-means++", batch_size=1_000_000, max_iter=100, tol=1e-5,
                             random_state=args.seed)
        sec, _ = timed(lambda: mb.fit(xn))
        add("sklearn MiniBatchKMeans (reference settings)", sec, mb.cluster_centers_, False)

    print(f"\n{'method':<52} {'time s':>8} {'inertia':>16} {'/faiss':>8}")
    for name, sec, val, _ in rows:
        print(f"{name:<52} {sec:>8.2f} {val:>16.1f} {val / faiss_row[2]:>8.5f}")
    print(f"(faiss same init: train {train:.2f}s + labels {label:.2f}s; ours: {iters} updates, "
          f"{iters + 1} assignment passes and an input check)")
    if not args.skip_sklearn:
        sk = rows[-1]
        print(f"ours default vs sklearn: {sk[1] / ours_default[1]:.1f}x faster, "
              f"inertia ratio {ours_default[2] / sk[2]:.5f}")
    best = min((r for r in rows if r[3] and r[0].startswith("ours")), key=lambda r: r[1])
    print(f"best of ours: {best[0]}")
    print(f"ours vs faiss: time ratio {best[1] / faiss_row[1]:.3f}, inertia ratio {best[2] / faiss_row[2]:.6f}")


if __name__ == "__main__":
    main()
