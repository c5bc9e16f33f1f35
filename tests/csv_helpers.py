"""CSV data sets for the tests (open_clip's `--dataset-type csv` layout): image files plus one CSV
naming them, made from real webdataset shards so that the same images and captions can be run
through both sources."""
from __future__ import annotations

import csv
import json
import os

from mcl_dist.data.streaming import ErrorLog, raw_samples


def shards_to_csv(shards: list[str], out_dir: str, *, sep: str = "\t", absolute_every: int = 0,
                  img_key: str = "filepath", caption_key: str = "title", extra_columns: bool = True) -> str:
    """Write every sample's image to out_dir/images/<key>.png and one row per sample to
    out_dir/data.csv (image path relative to the CSV, or absolute on every `absolute_every`-th row;
    the caption; with `extra_columns` the fields of the sample's .json, e.g. the label fields)."""
    images = os.path.join(out_dir, "images")
    os.makedirs(images, exist_ok=True)
    rows, extra = [], []
    for raw in raw_samples(shards, ErrorLog()):
        path = os.path.join(images, raw["__key__"] + ".png")
        with open(path, "wb") as f:
            f.write(raw["png"])
        fields = json.loads(raw["json"]) if extra_columns and "json" in raw else {}
        extra = extra or [k for k in fields if isinstance(fields[k], str)]
        n = len(rows)
        named = path if absolute_every and n % absolute_every == absolute_every - 1 else os.path.relpath(path, out_dir)
        rows.append([named, raw["txt"].decode(), *[fields.get(k, "") for k in extra]])
    path = os.path.join(out_dir, "data.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow([img_key, caption_key, *extra])
        writer.writerows(rows)
    return path
