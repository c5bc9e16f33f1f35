"""Cluster inspector: what did a stage's k-means clusters (or pseudo-labels) capture?

For stage S of a run it reads the groups (`stage_S/kmeans/assign*.npz`, or the pseudo-labels
in `stage_S/labels.npz`), the samples' `{key}.json` attribute records through the training data's
random access (for shards the cached tar index `RUN_DIR/index`, built if missing; for a CSV its
extra columns), and writes

    cluster_grid.png   one row per group: its id and size, then `per_group` sample images
    purity.md / .json  per group and attribute: the majority value and its share of the group
                       ("purity"); plus the size-weighted mean purity per attribute

A group that is pure in `color` but mixed in `shape` says the previous stage had learned colour
and not shape: the next stage's negatives all share the colour, so it has to learn something else.

    from mcl_dist.clustering.cluster_inspect import inspect_stage
    inspect_stage("runs/demo", 1, out_dir="runs/demo/inspect/stage_1")
"""
from __future__ import annotations

import glob
import io
import json
import os
from collections import Counter
from typing import Optional, Sequence

import numpy as np
import yaml
from PIL import Image, ImageDraw

from mcl_dist.clustering.pseudo_labels import load_labels
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import anchored, saved_path
from mcl_dist.core import layout
from mcl_dist.core.files import atomic_path, load_npz, write_json, write_text
from mcl_dist.data.dataset import TrainData
from mcl_dist.data.dataset_types import open_data

SOURCES = ("clusters", "labels")


def _as_str(keys) -> list[str]:
    return [k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else str(k) for k in np.asarray(keys).tolist()]


def load_groups(run_dir: str, stage: int, source: str = "clusters") -> tuple[list[str], np.ndarray]:
    """(sample keys, group id per key) of stage `stage`: its k-means clusters or its pseudo-labels."""
    if source == "clusters":
        pattern = layout.assignments_glob(layout.kmeans_dir(run_dir, stage))
        parts = sorted(glob.glob(pattern))
        if not parts:
            raise FileNotFoundError(f"{pattern}: no such file (stage {stage} has no k-means step, "
                                    "or it has not run yet; stage 0 never has clusters)")
        keys, ids = [], []
        for p in parts:
            z = load_npz(p)
            keys += _as_str(z["keys"])
            ids.append(np.asarray(z["clusters"], np.int64))
        return keys, np.concatenate(ids)
    if source == "labels":
        path = layout.labels_path(run_dir, stage)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not found (stage {stage} has no pseudo-labels)")
        z = load_labels(path)
        return _as_str(z["keys"]), np.asarray(z["labels"], np.int64)
    raise ValueError(f"source {source!r}: use one of {SOURCES}")


def run_data(run_dir: str) -> TrainData:
    """The run's training data (shards or a CSV), from its resolved config.yaml."""
    return open_data(anchored(load_config(layout.config_path(run_dir))))


def run_index_dir(run_dir: str) -> str:
    """The run's tar index cache (its data.index_dir, else <run_dir>/index)."""
    with open(layout.config_path(run_dir)) as f:
        saved = yaml.safe_load(f) or {}
    index_dir = saved_path((saved.get("data") or {}).get("index_dir") or "", saved.get("anchor") or "")
    return layout.index_dir(run_dir, index_dir)


def read_records(data: TrainData, index_dir: str, keys: Sequence[str],
                 image_keys: Sequence[str] = ()) -> tuple[dict, dict]:
    """({key: parsed .json} for `keys`, {key: (ext, image bytes)} for `image_keys`) via the data's
    random access (the tar index is cached under index_dir)."""
    index = data.index(index_dir)
    want_img = set(image_keys)
    where = index.key_to_index(list(keys))
    meta, images = {}, {}
    try:
        for key, i in zip(keys, where.tolist()):
            if i < 0:
                continue
            sample = index.read_sample(i)
            if "json" in sample:
                meta[key] = json.loads(sample["json"])
            if key in want_img:
                ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in sample), None)
                if ext:
                    images[key] = sample[ext]
    finally:
        index.close()
    return meta, images


def purity(groups: np.ndarray, records: Sequence[Optional[dict]], attributes: Sequence[str]) -> dict:
    """Per group and attribute, the majority value and its share among the group's samples that
    carry the attribute; plus the size-weighted mean share per attribute ("mean_purity").

    {"groups": {gid: {"size", attr: {"majority", "share"}}}, "mean_purity": {attr: float},
     "chance": {attr: share of the most common value overall}}"""
    groups = np.asarray(groups)
    out: dict = {"groups": {}, "mean_purity": {}, "chance": {}}
    for attr in attributes:
        vals = [None if r is None else r.get(attr) for r in records]
        hits, total = 0, 0
        for g in np.unique(groups[groups >= 0]):
            members = [vals[i] for i in np.flatnonzero(groups == g) if vals[i] is not None]
            entry = out["groups"].setdefault(int(g), {"size": int((groups == g).sum())})
            if not members:
                continue
            value, count = Counter(members).most_common(1)[0]
            entry[attr] = {"majority": value, "share": count / len(members)}
            hits, total = hits + count, total + len(members)
        out["mean_purity"][attr] = hits / total if total else float("nan")
        present = [v for v in vals if v is not None]
        out["chance"][attr] = Counter(present).most_common(1)[0][1] / len(present) if present else float("nan")
    return out


def attributes_of(records: Sequence[Optional[dict]]) -> list[str]:
    """Attribute names of the records: string-valued fields (not the *_id twins)."""
    names: dict = {}
    for r in records:
        for k, v in (r or {}).items():
            if not k.endswith("_id") and isinstance(v, (str, int)) and not isinstance(v, bool):
                names.setdefault(k, None)
    return list(names)


def image_grid(rows: Sequence[tuple[str, Sequence[bytes]]], path: str, per_row: int = 8, scale: int = 3,
               label_width: int = 110) -> str:
    """A PNG with one row per (label, encoded images); images upscaled `scale` times."""
    decoded = [[Image.open(io.BytesIO(b)).convert("RGB") for b in imgs[:per_row]] for _, imgs in rows]
    size = max((im.size[0] for r in decoded for im in r), default=32) * scale
    pad = 2
    canvas = Image.new("RGB", (label_width + per_row * (size + pad), max(1, len(rows)) * (size + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, ((label, _), imgs) in enumerate(zip(rows, decoded)):
        y = r * (size + pad)
        draw.text((4, y + size // 2 - 12), label, fill="black")
        for c, im in enumerate(imgs):
            canvas.paste(im.resize((size, size), Image.NEAREST), (label_width + c * (size + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def purity_markdown(res: dict, attributes: Sequence[str], title: str = "") -> str:
    lines = [f"# {title}" if title else "", "",
             "| group | size | " + " | ".join(attributes) + " |", "|---|---|" + "---|" * len(attributes),
             "| **weighted mean** | | " + " | ".join(f"**{res['mean_purity'][a]:.2f}**" for a in attributes) + " |",
             "| *chance (majority overall)* | | " + " | ".join(f"*{res['chance'][a]:.2f}*" for a in attributes) + " |"]
    for g, e in sorted(res["groups"].items(), key=lambda kv: -kv[1]["size"]):
        cells = [f"{e[a]['majority']} {e[a]['share']:.2f}" if a in e else "—" for a in attributes]
        lines.append(f"| {g} | {e['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stage_purity(run_dir: str, stage: int, source: str = "clusters",
                 attributes: Optional[Sequence[str]] = None) -> dict:
    """Purity of stage `stage`'s groups (no images read): see `purity`."""
    keys, groups = load_groups(run_dir, stage, source)
    meta, _ = read_records(run_data(run_dir), run_index_dir(run_dir), keys)
    records = [meta.get(k) for k in keys]
    return purity(groups, records, list(attributes or attributes_of(records)))


def inspect_stage(run_dir: str, stage: int, out_dir: Optional[str] = None, source: str = "clusters",
                  per_group: int = 8, max_groups: int = 64, seed: int = 0,
                  attributes: Optional[Sequence[str]] = None) -> dict:
    """Write cluster_grid.png, purity.md and purity.json for one stage; returns the purity dict
    with the output paths under "files". Groups are drawn largest first (at most `max_groups`
    rows in the grid; the purity table lists every group); samples are a seeded random pick."""
    out_dir = out_dir or layout.inspect_dir(run_dir, stage, source)
    keys, groups = load_groups(run_dir, stage, source)
    rng = np.random.default_rng(seed)
    ids, sizes = np.unique(groups[groups >= 0], return_counts=True)
    shown = ids[np.argsort(-sizes, kind="stable")][:max_groups]
    picks = {int(g): [keys[i] for i in rng.permutation(np.flatnonzero(groups == g))[:per_group]] for g in shown}
    meta, images = read_records(run_data(run_dir), run_index_dir(run_dir), keys,
                                [k for ks in picks.values() for k in ks])
    records = [meta.get(k) for k in keys]
    attributes = list(attributes or attributes_of(records))
    res = purity(groups, records, attributes)
    rows = [(f"{source[:-1]} {g}\nn={int((groups == g).sum())}", [images[k] for k in picks[g] if k in images])
            for g in picks]
    grid = image_grid(rows, os.path.join(out_dir, "cluster_grid.png"), per_row=per_group)
    md = purity_markdown(res, attributes, f"{run_dir}: stage {stage} {source} ({len(ids)} groups, {len(keys)} samples)")
    write_text(md, os.path.join(out_dir, "purity.md"))
    write_json({**res, "groups": {str(g): e for g, e in res["groups"].items()}}, os.path.join(out_dir, "purity.json"))
    res["files"] = {"grid": grid, "markdown": os.path.join(out_dir, "purity.md"),
                    "json": os.path.join(out_dir, "purity.json")}
    return res
