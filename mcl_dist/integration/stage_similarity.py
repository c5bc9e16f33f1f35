"""How much a stage's features differ from the earlier stages': linear CKA (Kornblith et al. 2019).

CKA(X, Y) = ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) for column-centred feature matrices
of the same samples: 1 when one is an orthogonal transform and scaling of the other, near 0 for
unrelated features. A stage whose features are nearly those of the earlier stages (CKA close to 1)
learned nothing new: a label-free stop signal, and a reason to down-weight the stage in the
integrated model (mcl_dist/integration/integrated_model.py, model.integration_weights). Where the features come from:

- `embedded_features`: the embed steps' files (stage_s/embed holds stage s-1's features), rank
  0's part aligned by key; the labels step uses it before stage s trains.
- `sample_features`: the first samples of the training shards through every stage model; the
  integrate step uses it, as the last stage is never embedded.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mcl_dist.clustering.embedding import encode, list_parts
from mcl_dist.core import layout
from mcl_dist.data.decode import ClipDecoder
from mcl_dist.data.streaming import ShardStream


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"linear_cka needs two (N, D) matrices of the same N >= 2, got {x.shape} and {y.shape}")
    x, y = x - x.mean(0), y - y.mean(0)
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(x.T @ y) ** 2 / den) if den > 0 else 0.0


def cka_to_earlier(feats: list[np.ndarray]) -> list[Optional[float]]:
    """Per stage: CKA of its features with the concatenation of every earlier stage's (each
    L2-normalised, as the integrated model joins them); None for stage 0."""
    unit = [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for f in map(np.float64, feats)]
    return [None] + [linear_cka(unit[s], np.concatenate(unit[:s], 1)) for s in range(1, len(unit))]


def embedded_features(embed_dirs: list[str], max_rows: int = 4096, seed: int = 0) -> list[np.ndarray]:
    """The features in each embed folder for the same samples: rank 0's part of each, rows
    aligned by key, at most max_rows of them (a seeded choice)."""
    parts = []
    for d in embed_dirs:
        found = list_parts(d)
        if not found:
            raise FileNotFoundError(f"{d}: no embedding parts")
        feats_path, keys_path = found[0]
        parts.append((np.load(feats_path, mmap_mode="r"), np.load(keys_path)))
    common = parts[0][1]
    for _, keys in parts[1:]:
        common = common[np.isin(common, keys)]
    if len(common) > max_rows:
        common = np.sort(np.random.default_rng(seed).choice(common, max_rows, replace=False))
    out = []
    for feats, keys in parts:
        order = np.argsort(keys)
        out.append(np.asarray(feats[order[np.searchsorted(keys[order], common)]], np.float32))
    return out


@torch.no_grad()
def sample_features(bundles: list[dict], urls: Sequence, max_samples: int, *, batch_size: int = 256,
                    image_ext: str = "jpg;png;webp;jpeg", device="cpu", read: Optional[Callable] = None) -> list[np.ndarray]:
    """Each stage model's normalised image features of the first max_samples training samples
    (every stage sees the same images; the first bundle's eval preprocessing feeds them all).
    `urls`: tar shards, or any data's units with its `read` (data/dataset.py)."""
    decoder = ClipDecoder(bundles[0]["preprocess_val"], None, image_ext, need_text=False)
    stream = ShardStream(urls, decoder, batch_size=batch_size, rank=0, world=1, seed=None, infinite=False,
                         read=read)
    out: list[list[np.ndarray]] = [[] for _ in bundles]
    seen = 0
    for b in bundles:
        b["model"].eval()
    for batch in stream:
        if not batch["key"]:
            continue
        take = min(len(batch["key"]), max_samples - seen)
        batch = {"image": batch["image"][:take]}
        for feats, b in zip(out, bundles):
            feats.append(encode(b["model"], batch, "image", device).cpu().numpy())
        seen += take
        if seen >= max_samples:
            break
    if seen < 2:
        raise ValueError(f"sample_features: {seen} readable samples in {urls[:1]}...; CKA needs 2 or more")
    return [np.concatenate(f) for f in out]


def embed_dirs_until(run_dir: str, stage: int) -> list[str]:
    """stage_1/embed .. stage_<stage>/embed: the features of stages 0 .. stage-1."""
    return [layout.embed_dir(run_dir, t) for t in range(1, stage + 1)]
