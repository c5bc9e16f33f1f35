"""Distributed embedding of the whole training set with a stage checkpoint.

Rank r embeds shards r, r+W, r+2W, ... (every shard by exactly one rank, whatever the shard
count; any data's units alike, data/dataset.py `embed_share`: a CSV's rows) and writes `part{r}-of{W}.feats.npy` (fp16, L2-normalised) and `.keys.npy` atomically.
A part that exists is complete (it was renamed into place at the end), so a re-run skips it; a
rank killed half-way leaves nothing and redoes its share. Bad samples are skipped and counted,
exactly as in training; they get no pseudo-label downstream. Above `data.max_bad_fraction` of
all ranks' samples the step stops before any part is written.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections import Counter
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mcl_dist.core import distributed as dist_utils
from mcl_dist.core import layout
from mcl_dist.core.files import atomic_path, read_json, write_json
from mcl_dist.core.progress import progress
from mcl_dist.data import data_report
from mcl_dist.data.decode import ClipDecoder
from mcl_dist.data.preflight import DataError
from mcl_dist.data.streaming import BadSampleMonitor, ShardStream, make_loader
from mcl_dist.training.optim import autocast_dtype

log = logging.getLogger("mcl_dist")


def part_paths(out_dir: str, rank: int, world: int) -> tuple[str, str]:
    return layout.embed_part(out_dir, rank, world, layout.FEATS), layout.embed_part(out_dir, rank, world, layout.KEYS)


def _stats_path(feats_path: str) -> str:
    """A part's own counts (samples, bad by reason), written before the part: a re-run that skips
    the part reads them back instead of counting its bad samples as none."""
    return feats_path.replace(layout.FEATS, layout.PART_STATS)


def embedded_bad(run_dir: str, s: int) -> int:
    """Samples stage s's embedding counted bad (0 when it recorded none)."""
    path = layout.embed_stats_path(run_dir, s)
    return int(read_json(path).get("bad", 0)) if os.path.exists(path) else 0


def list_parts(out_dir: str) -> list[tuple[str, str]]:
    feats = sorted(glob.glob(layout.embed_parts_glob(out_dir, layout.FEATS)))
    return [(f, f.replace(layout.FEATS, layout.KEYS)) for f in feats]


@torch.no_grad()
def encode(model: torch.nn.Module, batch: dict, mode: str, device: torch.device,
           dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Unit feature rows in float32; the towers run under autocast to `dtype` when given (bf16
    on a GPU: the features keep cosine >= 0.999 to fp32's, and the parts are stored in fp16)."""
    feats = []
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with amp:
        if mode in ("image", "joint"):
            feats.append(F.normalize(model.encode_image(batch["image"].to(device)).float(), dim=-1))
        if mode in ("text", "joint"):
            feats.append(F.normalize(model.encode_text(batch["text"].to(device)).float(), dim=-1))
    # joint: the mean of the two unit vectors, renormalised (image and text weigh equally)
    return F.normalize(sum(feats), dim=-1)


def _save_npy(path: str, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def embed_shards(model: torch.nn.Module, bundle: dict, urls: list[str], out_dir: str, *, mode: str = "image",
                 batch_size: int = 256, workers: int = 2, image_ext: str = "jpg;png;webp;jpeg",
                 caption_ext: str = "txt", max_bad_fraction: float = 1.0, max_pixels: int = 40_000_000,
                 max_bytes: int = 64 << 20, precision: str = "auto", need_caption: bool = False,
                 mine: Optional[Sequence] = None, read: Optional[Callable] = None,
                 run_dir: str = "", step: str = "") -> dict[str, Any]:
    """`precision` as train.precision: "auto" runs the towers in bf16 autocast on a GPU, fp32 on a CPU.
    `mine` (this rank's units, default urls[rank::world]) and `read` (their reader, default tar
    shards): a data set's `embed_share` and `read` (data/dataset.py). `run_dir` and `step`: the run
    whose data_report.json gets the step's entry (none when not given)."""
    report = (run_dir, step) if run_dir else None
    info = dist_utils.info()
    feats_path, keys_path = part_paths(out_dir, info.rank, info.world_size)
    monitor = BadSampleMonitor(max_bad_fraction)
    if os.path.exists(feats_path) and os.path.exists(keys_path):
        log.info("embedding part %s exists, skipped", feats_path)
        n = len(np.load(keys_path, mmap_mode="r"))
        _check_bad_samples(monitor, out_dir)  # nothing to add, but the other ranks gather
        kept = read_json(_stats_path(feats_path)) if os.path.exists(_stats_path(feats_path)) else {}
        return _summarise({"bad": 0, "reasons": {}, "seen": n, **kept, "samples": n, "seconds": 0.0}, out_dir, report)
    mine = urls[info.rank::info.world_size] if mine is None else mine
    decoder = ClipDecoder(bundle["preprocess_val"], bundle["tokenizer"], image_ext, caption_ext,
                          need_text=mode != "image" or need_caption, max_pixels=max_pixels, max_bytes=max_bytes)
    stream = ShardStream(mine, decoder, batch_size=batch_size, rank=0, world=1, seed=None, infinite=False, read=read)
    n_workers, dtype = min(workers, len(mine)), autocast_dtype(precision, info.device)
    model.eval()
    chunks, keys, t0 = [], [], time.perf_counter()
    bar = progress(desc=f"embed ({mode})", unit="sample", enabled=info.is_main)
    if len(mine):
        for batch in make_loader(stream, n_workers):
            monitor.update(batch["meta"], len(batch["key"]))
            if not batch["key"]:
                continue
            chunks.append(encode(model, batch, mode, info.device, dtype).half().cpu().numpy())
            keys += batch["key"]
            bar.update(len(batch["key"]) * info.world_size)
    bar.close()
    dim = chunks[0].shape[1] if chunks else int(getattr(model, "output_dim", 0) or getattr(getattr(model, "visual", None), "output_dim", 0))
    feats = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float16)
    _check_bad_samples(monitor, out_dir)
    account = data_report.stream_entry(monitor.summary())
    # stats and keys first, feats last: the feats file is the marker that the part is complete
    write_json(account, _stats_path(feats_path))
    _save_npy(keys_path, np.asarray(keys, dtype=str))
    _save_npy(feats_path, feats)
    return _summarise({**account, "samples": len(keys), "seconds": time.perf_counter() - t0}, out_dir, report)


def _check_bad_samples(monitor: BadSampleMonitor, out_dir: str) -> None:
    """Stop when all ranks' bad samples together exceed data.max_bad_fraction. Checked once, at the
    end of this rank's pass (ranks read different numbers of batches, so there is no common step
    to check at before) and before the part is written: a written part is skipped on a re-run and
    its samples would never be counted again. Every rank raises the same message."""
    total = monitor.merge(dist_utils.all_gather_object(monitor.summary()))
    message = monitor.check(total)
    if message:
        raise DataError(f"{out_dir}: {message}")


def _summarise(stats: dict, out_dir: str, report: Optional[tuple[str, str]]) -> dict[str, Any]:
    """Sum the ranks' counts; rank 0 writes them next to the parts."""
    all_stats = dist_utils.all_gather_object(stats)
    reasons = sum((Counter(s.get("reasons", {})) for s in all_stats), Counter())
    total = {"samples": sum(s["samples"] for s in all_stats), "bad": sum(s["bad"] for s in all_stats),
             "seconds": max(s["seconds"] for s in all_stats), "reasons": dict(sorted(reasons.items()))}
    total["samples_per_s"] = total["samples"] / total["seconds"] if total["seconds"] else 0.0
    if total["samples"] == 0:  # every rank raises the same error (k-means would get no rows)
        told = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "the shards are empty"
        raise DataError(f"{out_dir}: no sample could be embedded ({total['bad']} bad: {told}); check the "
                        "shards and data.image_ext / data.caption_ext, then re-run")
    if dist_utils.info().is_main:
        write_json(total, os.path.join(out_dir, layout.EMBED_STATS))
        damaged = sorted({d for s in all_stats for d in s.get("damaged_shards", [])})
        if report:
            data_report.record(*report, {"seen": sum(s.get("seen", s["samples"]) for s in all_stats),
                                         "bad": total["bad"], "reasons": total["reasons"], "damaged_shards": damaged})
        log.info("embedded %d samples (%d bad skipped) in %.1fs, %.0f samples/s", total["samples"], total["bad"],
                 total["seconds"], total["samples_per_s"])
    return total


def check_parts(out_dir: str, world: int, step: str) -> None:
    """The embedding covers the shard list only if every rank's part is there (rank r embedded
    shards r, r+W, ...): a missing part would silently drop its shards from k-means and labels."""
    for r in range(world):
        for path in part_paths(out_dir, r, world):
            if not os.path.isfile(path):
                raise DataError(f"{path} is missing: the embedding no longer covers the shard list (rank {r}'s "
                                f"share of {world}); recover with --redo {step} (it recomputes that step and every "
                                f"later one)")


def load_share(out_dir: str, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows for k-means: parts rank, rank+W, ... memory-mapped, then concatenated."""
    parts = list_parts(out_dir)
    if not parts:
        raise FileNotFoundError(f"{out_dir}: no embedding parts (run the embed step first)")
    feats, keys = [], []
    for feats_path, keys_path in parts[rank::world]:
        feats.append(np.load(feats_path, mmap_mode="r"))
        keys.append(np.load(keys_path))
    if not feats:
        dim = np.load(parts[0][0], mmap_mode="r").shape[1]
        return np.zeros((0, dim), np.float16), np.zeros((0,), str)
    return np.concatenate(feats), np.concatenate(keys)
