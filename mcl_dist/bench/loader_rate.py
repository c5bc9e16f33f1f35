"""How fast does one CPU core decode and transform real-size JPEGs, and how many DataLoader
workers per GPU does a trainer need?

    python tools/bench_loader_jpeg.py --shards '/tmp/jpeg256/{00000..00001}.tar' --model ViT-L-14

The path is the training loader's own: `ShardStream` (seeded per-sample augmentation, as stage 0
streams) + `ClipDecoder` with open_clip's training transform for the model (RandomResizedCrop to
its image size, normalise) and its tokenizer, collated into batches. With `workers=0` it runs in
this process on one thread, i.e. one core; with N workers the DataLoader's aggregate rate.
Workers needed = ceil(trainer samples/s per GPU / samples/s per core), assuming one core per
worker (a worker is single-threaded: torch sets 1 thread in DataLoader workers).
"""
from __future__ import annotations

import math
import time

import open_clip
import torch

from mcl_dist.data.decode import ClipDecoder
from mcl_dist.data.shards import expand_urls
from mcl_dist.data.streaming import ShardStream, make_loader


def train_transform(model: str):
    """open_clip's training transform and tokenizer for a model name, without building the model."""
    size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    return open_clip.image_transform(size, is_train=True), open_clip.get_tokenizer(model), size


def rate(shards: str, model: str, *, workers: int = 0, batch: int = 64, max_samples: int = 0,
         warmup_batches: int = 1) -> dict:
    """samples/s of decode + transform + tokenise + collate over the shards (after `warmup_batches`)."""
    preprocess, tokenizer, size = train_transform(model)
    urls = expand_urls(shards, "--shards")
    stream = ShardStream(urls, ClipDecoder(preprocess, tokenizer), batch_size=batch, rank=0, world=1, seed=0,
                         infinite=False)
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)  # one core: the transform's tensor ops would otherwise use more
    try:
        n, t0, seen = 0, None, 0
        for i, b in enumerate(make_loader(stream, min(workers, len(urls)))):
            seen += len(b["key"])
            if i + 1 == warmup_batches:
                t0 = time.perf_counter()
            elif i + 1 > warmup_batches:
                n += len(b["key"])
            if max_samples and seen >= max_samples:
                break
        sec = time.perf_counter() - t0 if t0 is not None else 0.0
    finally:
        torch.set_num_threads(threads)
    if not n:
        raise ValueError(f"{shards}: too few samples for {warmup_batches} warm-up batch(es) of {batch} and a timed one")
    return {"model": model, "image_size": size, "workers": workers, "batch": batch, "samples": n,
            "seconds": sec, "samples_per_s": n / sec}


def workers_needed(trainer_samples_per_s: float, per_core_samples_per_s: float) -> int:
    return math.ceil(trainer_samples_per_s / per_core_samples_per_s)
