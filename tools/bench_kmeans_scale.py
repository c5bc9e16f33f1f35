#!/usr/bin/env python
"""k-means on the pipeline's path (host fp16, spherical) vs faiss from the same init:
mcl_dist/bench/kmeans_scale.py. Prints the JSON; --out writes it.

    python tools/bench_kmeans_scale.py --n 1000000 --d 768 --k 10 --iters 10 --device cpu --out km.json
"""
import argparse
import json

from mcl_dist.bench.kmeans_scale import run
from mcl_dist.core.files import write_json

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    for name, default in (("n", 1_000_000), ("d", 768), ("k", 10), ("iters", 10), ("seed", 0),
                          ("faiss-rows", 0), ("faiss-iters", 0)):
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both torch and faiss (0: their defaults)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    if a.threads:
        import faiss
        import torch

        torch.set_num_threads(a.threads)
        faiss.omp_set_num_threads(a.threads)
    res = run(a.n, a.d, a.k, a.iters, a.device, a.seed, a.faiss_rows, a.faiss_iters)
    print(json.dumps(res, indent=1))
    if a.out:
        write_json(res, a.out)
