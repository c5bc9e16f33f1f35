"""Shards of real-size, photo-like JPEGs in img2dataset's layout, to measure the loader on what
CC12M looks like rather than on 32 px PNGs.

    python tools/make_jpeg_shards.py --out /tmp/jpeg256 --short-side 256 --samples 2048

Each image is a sum of random fields at several scales with a 1/f amplitude falloff (the
spectrum of natural photographs), a few hard-edged shapes and sensor-like noise, so JPEG
compresses it about as much as a photo: at quality 95 (img2dataset's default) a 256 px short
side gives ~15-40 KB and 512 px ~40-75 KB. The long side is drawn from 1x-1.5x the short one
(img2dataset's `keep_ratio` resize). Layout per shard `NNNNN.tar`: `{key}.jpg`, `{key}.txt`,
`{key}.json` with 9-digit keys (shard * 10^4 + index), plus `NNNNN_stats.json` beside the tar
with `successes` (what `--dry-run` counts).
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from mcl_dist.core.files import atomic_path, write_json

WORDS = ("a photo of", "a red", "wooden", "house", "near the", "river", "with", "two dogs", "in autumn",
         "light", "street", "at night", "city", "mountain", "blue sky", "people", "walking", "on a beach")


def _field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float in [0, 255]: octaves of upsampled noise, amplitude ~ 1/frequency."""
    out = np.zeros((h, w, 3), np.float32)
    for octave in range(7):
        cells = 2 ** (octave + 1)
        small = rng.normal(size=(cells, cells, 3)).astype(np.float32) * (0.6 ** octave)
        img = Image.fromarray(((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8))
        up = np.asarray(img.resize((w, h), Image.BICUBIC), np.float32) / 255 - 0.5
        out += up * 255 * (0.6 ** octave)
    tint = rng.uniform(60, 200, size=3).astype(np.float32)
    return out + tint


def photo(rng: np.random.Generator, short_side: int) -> Image.Image:
    long_side = int(short_side * rng.uniform(1.0, 1.5))
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    arr = _field(rng, h, w)
    # sensor noise; per pixel it shrinks as resolution grows (a downscaled photo averages it)
    noise = rng.uniform(2, 6) * min(1.0, (256 / short_side) ** 1.5)
    arr += rng.normal(scale=noise, size=arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # objects: hard edges, as in photos
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        box = [int(x0), int(y0), int(x0 + rng.integers(8, w // 2)), int(y0 + rng.integers(8, h // 2))]
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_jpeg_shard(out_dir: str, shard: int, n: int, short_side: int = 256, seed: int = 0,
                     quality: int = 95) -> str:
    """Shard `shard` (atomically) and its `_stats.json`; deterministic in (seed, shard)."""
    rng = np.random.default_rng([seed, shard])
    path = os.path.join(out_dir, f"{shard:05d}.tar")
    sizes = []
    with atomic_path(path) as tmp, open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0.0) as sink:
        for i in range(n):
            img = photo(rng, short_side)
            data = jpeg_bytes(img, quality)
            key = f"{shard * 10_000 + i:09d}"
            caption = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 10))))
            meta = {"key": key, "caption": caption, "width": img.width, "height": img.height,
                    "original_width": img.width, "original_height": img.height, "status": "success"}
            sink.write({"__key__": key, "jpg": data, "txt": caption.encode(), "json": json.dumps(meta).encode()})
            sizes.append(len(data))
    write_json({"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
                "mean_jpeg_bytes": float(np.mean(sizes))}, os.path.splitext(path)[0] + "_stats.json")
    return path


def shard_sizes(n_samples: int, samples_per_shard: int) -> list[int]:
    return [min(samples_per_shard, n_samples - s) for s in range(0, n_samples, samples_per_shard)]


def write_jpeg_shards(out_dir: str, *, n_samples: int, short_side: int = 256, samples_per_shard: int = 1000,
                      seed: int = 0, quality: int = 95, pool=None) -> list[str]:
    """Write `00000.tar ...` and their `_stats.json`; returns the tar paths. `pool` (an executor)
    writes the shards in parallel."""
    if n_samples < 1 or samples_per_shard < 1 or short_side < 16:
        raise ValueError(f"write_jpeg_shards: n_samples={n_samples}, samples_per_shard={samples_per_shard}, "
                         f"short_side={short_side} (need >= 1, >= 1, >= 16)")
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(out_dir, s, n, short_side, seed, quality) for s, n in enumerate(shard_sizes(n_samples, samples_per_shard))]
    if pool is None:
        return [write_jpeg_shard(*job) for job in jobs]
    return list(pool.map(write_jpeg_shard, *zip(*jobs)))


def pattern(paths: list[str]) -> str:
    """`dir/{00000..00003}.tar` for the paths write_jpeg_shards returns."""
    return os.path.join(os.path.dirname(paths[0]), f"{{00000..{len(paths) - 1:05d}}}.tar")
