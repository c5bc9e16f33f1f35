#!/usr/bin/env python
"""Stage-0 training throughput, ours vs open_clip_train (mcl_dist/bench/train_bench.py).

    python tools/bench_train.py [--model tiny-vit] [--nproc 2] [--steps 40] [--batch 128] [--rounds 2]
"""
from mcl_dist.bench.train_bench import command

if __name__ == "__main__":
    command()
