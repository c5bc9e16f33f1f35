#!/usr/bin/env python
"""Ours vs open_clip_train, alternating rounds, samples/s over the timed window, data-wait
share, model-only ceiling and MFU: mcl_dist/bench/throughput.py. Prints the JSON.

    python tools/bench_throughput.py --model tiny-vit --rounds 3 --steps 12            # CPU
    python tools/bench_throughput.py --model ViT-L-14 --lock-image --lock-image-unlocked-groups 6 \
        --lock-text --quick-gelu --batch-per-gpu 1000 --precision amp_bf16 --device cuda --workers 8 \
        --shards '/data/jpeg256/{00000..00031}.tar' --samples 32000
"""
import argparse
import json
import os
import tempfile
from dataclasses import fields

import torch

from mcl_dist.bench.throughput import ModelOnly, Recipe, rounds
from mcl_dist.bench.train_bench import model_args
from mcl_dist.synthetic.trifeature import ensure_demo_data

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Recipe):
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if f.type in (bool, "bool") else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shards", default="", help="default: synthetic PNG shards")
    p.add_argument("--samples", type=int, default=0)
    a = p.parse_args()
    r = Recipe(**{f.name: getattr(a, f.name) for f in fields(Recipe)})
    work = tempfile.mkdtemp(prefix="bench_throughput_")
    shards, n = a.shards, a.samples
    if not shards:
        n = max(a.samples, r.steps * r.global_batch)
        shards = ensure_demo_data(os.path.join(work, "data"), n_train=n, n_test=64, seed=0,
                                  samples_per_shard=max(64, n // (4 * r.nproc)))["train"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if r.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // r.nproc)))
    if r.device == "cpu":
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # the model-only ceiling runs like one trainer rank
    res = rounds(r, shards, n, work, env, a.rounds)
    ceiling = ModelOnly(r, torch.device(r.device), model_args(r.model)[1])
    res["model_only_samples_per_s"] = ceiling.rate(steps=max(3, r.steps - r.warmup))
    res["flops"] = ceiling.flops()
    print(json.dumps(res, indent=1))
