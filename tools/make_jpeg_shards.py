#!/usr/bin/env python
"""Write shards of photo-like JPEGs (img2dataset layout): mcl_dist/bench/jpeg_shards.py.

    python tools/make_jpeg_shards.py --out /tmp/jpeg256 --short-side 256 --samples 2000
"""
import argparse
import os

import numpy as np

from mcl_dist.bench.jpeg_shards import pattern, write_jpeg_shards

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    paths = write_jpeg_shards(a.out, n_samples=a.samples, short_side=a.short_side, samples_per_shard=a.per_shard,
                              seed=a.seed)
    sizes = [os.path.getsize(x) for x in paths]
    print(f"{pattern(paths)}: {a.samples} JPEGs, short side {a.short_side} px, "
          f"{np.sum(sizes) / a.samples / 1000:.1f} KB per sample (tar members included)")
