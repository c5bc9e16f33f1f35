"""Write webdataset shards in img2dataset's layout from (image path, caption) pairs.

Each shard is written to a temporary name and renamed when complete, so a killed writer never
leaves a truncated shard that looks finished; re-running skips shards that already exist.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Iterable, Iterator, Optional

import webdataset as wds

from mcl_dist.core.files import atomic_path
from mcl_dist.core.progress import track

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def pairs_from_table(path: str, image_col: str = "filepath", caption_col: str = "title") -> Iterator[tuple[str, str]]:
    """(image path, caption) rows of a CSV or TSV (open_clip_train's csv layout by default)."""
    delim = "\t" if path.endswith((".tsv", ".tab")) else ","
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=delim)
        missing = [c for c in (image_col, caption_col) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; columns are {reader.fieldnames} "
                             f"(choose them with --image-col/--caption-col)")
        for row in reader:
            img = row[image_col]
            yield (img if os.path.isabs(img) else os.path.join(base, img)), row[caption_col]


def pairs_from_folder(root: str) -> Iterator[tuple[str, str]]:
    """Images with a caption file beside them: a.jpg + a.txt (img2dataset's own output layout)."""
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTS:
                txt = os.path.join(dirpath, stem + ".txt")
                caption = open(txt, encoding="utf-8").read().strip() if os.path.exists(txt) else ""
                yield os.path.join(dirpath, name), caption


def write_pair_shards(pairs: Iterable[tuple[str, str]], out_dir: str, *, samples_per_shard: int = 10000,
                      prefix: str = "", total: Optional[int] = None) -> dict:
    """Returns counts; samples whose image file is missing are skipped and counted."""
    os.makedirs(out_dir, exist_ok=True)
    shard, buf, written, skipped, shards = 0, [], 0, 0, []

    def flush() -> None:
        nonlocal shard, buf
        path = os.path.join(out_dir, f"{prefix}{shard:05d}.tar")
        if not os.path.exists(path):
            with atomic_path(path) as tmp:
                with wds.TarWriter(tmp) as sink:
                    for sample in buf:
                        sink.write(sample)
        shards.append(path)
        shard, buf = shard + 1, []

    for i, (image, caption) in enumerate(track(pairs, total, desc="writing shards", unit="sample")):
        ext = os.path.splitext(image)[1].lower().lstrip(".")
        if not os.path.exists(image) or f".{ext}" not in IMAGE_EXTS:
            skipped += 1
            continue
        with open(image, "rb") as f:
            data = f.read()
        key = f"{prefix}{i:09d}"
        buf.append({"__key__": key, "jpg" if ext == "jpeg" else ext: data, "txt": caption,
                    "json": json.dumps({"key": key, "caption": caption, "source": os.path.basename(image)})})
        written += 1
        if len(buf) == samples_per_shard:
            flush()
    if buf:
        flush()
    return {"shards": shards, "samples": written, "skipped": skipped}
