#!/usr/bin/env python
"""Loader throughput: plain sequential webdataset streaming vs our indexed, cluster-bucketed loader.

Same shards, same DataLoader workers, same open_clip transform and tokenizer, same batch size.
(a) `webdataset.WebDataset(...).decode("pil").to_tuple(...)`, the peer;
(b) `PlannedSource`: the tar index + the cluster-bucketed plan over 100 random clusters.
Rounds alternate (a) and (b); the median samples/s is reported. Then our stage-1 training
samples/s over our stage-0 samples/s on the tiny model (2 ranks, the same shards).

    python tools/bench_loader.py [--samples 8192] [--workers 2] [--batch 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from mcl_dist.core import layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def transforms():
    import open_clip

    open_clip.add_model_config(os.path.join(ROOT, "configs/models/tiny-vit.json"))
    _, preprocess, _ = open_clip.create_model_and_transforms("tiny-vit")
    return preprocess, open_clip.get_tokenizer("tiny-vit")


class Tokenize:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text):
        return self.tokenizer([text])[0]


def plain_webdataset(urls, preprocess, tokenizer, batch, workers) -> float:
    import webdataset as wds
    from torch.utils.data import DataLoader

    ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only, empty_check=False)
          .decode("pil").to_tuple("png", "txt").map_tuple(preprocess, Tokenize(tokenizer)).batched(batch))
    loader = DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4)
    return _time(loader)


def indexed_planned(urls, index_dir, preprocess, tokenizer, batch, workers, clusters) -> float:
    import numpy as np

    from mcl_dist.data.decode import ClipDecoder
    from mcl_dist.data.sources import PlannedSource
    from mcl_dist.data.tar_index import build_or_load_index

    index = build_or_load_index(urls, index_dir, progress=False)
    labels = np.random.default_rng(0).integers(0, clusters, len(index))
    source = PlannedSource(index, labels, ClipDecoder(preprocess, tokenizer, "png", "txt"), micro_batch=batch, accum=1,
                           world=1, rank=0, group_size=32, seed=0, workers=workers)
    steps = source.plan(0).num_steps

    def one_epoch():
        for i, b in enumerate(source.batches({"epoch": 0, "step": 0})):
            yield b
            if i + 1 == steps:
                return

    return _time(one_epoch())


def _time(batches) -> float:
    n, t0 = 0, time.perf_counter()
    for b in batches:
        n += len(b[0]) if isinstance(b, (tuple, list)) else len(b["key"])
    return n / (time.perf_counter() - t0)


def training_ratio(data: dict, work: str, samples: int) -> tuple[float, float]:
    """Median samples/s of stage 0 and stage 1 from one 2-rank, 2-stage run of our pipeline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = os.path.join(work, "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "launch/pretrain.py", "--config", "configs/demo.yaml", "--run-dir", run_dir, "data.synthetic=false",
           f"data.train_shards={data['train']}", "train.max_steps=40", "train.log_every=1",
           "train.checkpoint_every=1000", "stages=[{}, {k: 16, group_size: 16}]", "eval.enabled=false"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr[-4000:])
    rates = []
    for s in (0, 1):
        with open(layout.metrics_path(layout.stage_dir(run_dir, s))) as f:
            rows = [json.loads(line) for line in f]
        rates.append(statistics.median(r["samples_per_s"] for r in rows if r["step"] > 5))
    return rates[0], rates[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-training", action="store_true")
    a = p.parse_args()
    from mcl_dist.data.shards import expand_urls
    from mcl_dist.synthetic.trifeature import ensure_demo_data

    work = tempfile.mkdtemp(prefix="bench_loader_")
    data = ensure_demo_data(os.path.join(work, "data"), n_train=a.samples, n_test=64, seed=0,
                            samples_per_shard=max(64, a.samples // 16), mmvp_pairs=0, progress=False)
    urls = expand_urls(data["train"])
    preprocess, tokenizer = transforms()
    plain, ours = [], []
    for r in range(a.rounds):
        plain.append(plain_webdataset(urls, preprocess, tokenizer, a.batch, a.workers))
        ours.append(indexed_planned(urls, layout.index_dir(work), preprocess, tokenizer, a.batch, a.workers,
                                    a.clusters))
        print(f"round {r + 1}: streaming {plain[-1]:.0f} samples/s, indexed {ours[-1]:.0f} samples/s", flush=True)
    mp, mo = statistics.median(plain), statistics.median(ours)
    print(f"{a.samples} samples in {len(urls)} shards, {a.workers} workers, batch {a.batch}, {a.clusters} clusters")
    print(f"plain webdataset streaming: {mp:.0f} samples/s")
    print(f"indexed cluster-bucketed:   {mo:.0f} samples/s")
    print(f"indexed/streaming samples/s ratio: {mo / mp:.2f}")
    if not a.skip_training:
        s0, s1 = training_ratio(data, work, a.samples)
        print(f"training, tiny-vit, 2 ranks: stage 0 {s0:.0f} samples/s, stage 1 {s1:.0f} samples/s")
        print(f"stage-1/stage-0 training samples/s ratio: {s1 / s0:.2f}")


if __name__ == "__main__":
    main()
