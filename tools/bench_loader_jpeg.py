#!/usr/bin/env python
"""Decode + transform samples/s of real-size JPEG shards on one core (or N workers), and the
workers per GPU needed to feed a trainer: mcl_dist/bench/loader_rate.py.

    python tools/make_jpeg_shards.py --out /tmp/jpeg256 --short-side 256 --samples 1500
    python tools/bench_loader_jpeg.py --shards '/tmp/jpeg256/{00000..00002}.tar' --model ViT-B-32 --repeats 3 \
        --trainer-rate 2663 --trainer-rate 630
"""
import argparse
import json
import statistics

from mcl_dist.bench.loader_rate import rate, workers_needed
from mcl_dist.core.files import write_json

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--workers", type=int, default=0, help="0: this process, one thread (one core)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-samples", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trainer-rate", type=float, action="append", default=[], help="samples/s per GPU to feed")
    p.add_argument("--out", default="")
    a = p.parse_args()
    runs = [rate(a.shards, a.model, workers=a.workers, batch=a.batch, max_samples=a.max_samples)
            for _ in range(a.repeats)]
    rates = [r["samples_per_s"] for r in runs]
    res = {**runs[0], "shards": a.shards, "samples_per_s": statistics.median(rates), "all_samples_per_s": rates,
           "workers_needed": {str(t): workers_needed(t, statistics.median(rates)) for t in a.trainer_rate}}
    for key in ("seconds", "samples"):
        res.pop(key)
    print(json.dumps(res, indent=1))
    if a.out:
        write_json(res, a.out)
