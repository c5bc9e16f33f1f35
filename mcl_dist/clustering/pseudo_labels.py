"""Pseudo-labels: the combination of every earlier stage's cluster id, with a small-label fallback.

MCL's stage s+1 draws an anchor's negatives only from samples that shared its cluster in *every*
preceding stage, so the label of stage s is the pair (label of stage s-1, cluster of stage s).
(The public reference code combines the current stage's clusters with themselves instead.)

A combination with fewer than `min_label_size` samples cannot give its samples useful negatives,
so its samples fall back to the parent label (all small children of one parent share it). The
threshold must stay small (a few samples, not a batch): the prototype in docs/design.md section 7 found
that stage-2 labels are typically ~20 samples, and a batch-sized threshold would send most of
them back to stage 1, silently repeating the previous stage.

Labels are saved with the sample keys and a fingerprint of the shards, so labels computed on one
data set are never applied to another.
"""
from __future__ import annotations

import csv
from typing import Optional

import numpy as np

from mcl_dist.core.files import atomic_path, load_npz, save_npz
from mcl_dist.data.preflight import DataError


def _combine(parent: np.ndarray, cluster: np.ndarray, min_label_size: int) -> np.ndarray:
    """One recursion step on valid samples: dense ids of (parent, cluster) or parent's own id.

    Codes sort as (parent, marker, cluster), with the fallback marker first, so the dense
    numbering is deterministic and ordered like the label tuples.
    """
    width = int(cluster.max()) + 2 if cluster.size else 1
    pair = parent.astype(np.int64) * width + (cluster.astype(np.int64) + 1)
    _, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
    small = counts[inverse] < min_label_size
    pair[small] = parent[small].astype(np.int64) * width  # code of the fallback "parent" label
    _, dense = np.unique(pair, return_inverse=True)
    return dense.reshape(-1).astype(np.int64)


def compose_labels(cluster_ids: list[np.ndarray], min_label_size: int = 4) -> np.ndarray:
    """Dense int64 pseudo-labels (0..n_labels-1) from per-stage cluster ids; -1 = missing.

    cluster_ids[s][i] is sample i's cluster at stage s (-1 where it was not embedded); a sample
    missing in any stage has no label tuple and gets -1. L_0 = c_0 where that cluster is large
    enough, else the root label shared by everything; L_s = (L_{s-1}, c_s) where that combination
    has >= min_label_size samples, else L_{s-1}.
    """
    if not len(cluster_ids):
        raise ValueError("compose_labels needs the cluster ids of at least one stage")
    rows = [np.asarray(c, dtype=np.int64).reshape(-1) for c in cluster_ids]
    n = rows[0].size
    if any(r.size != n for r in rows):
        raise ValueError(f"cluster ids of all stages must be aligned; got sizes {[r.size for r in rows]}")
    if min_label_size < 1:
        raise ValueError(f"min_label_size must be >= 1, got {min_label_size}")
    valid = np.ones(n, dtype=bool)
    for r in rows:
        valid &= r >= 0
    label = np.zeros(int(valid.sum()), dtype=np.int64)  # the root label: "everything"
    for r in rows:
        label = _combine(label, r[valid], min_label_size)
    out = np.full(n, -1, dtype=np.int64)
    out[valid] = label
    return out


def check_complete(clusters: np.ndarray, bad: int, where: str, step: str) -> None:
    """Every sample of the shards has a cluster or was counted bad when it was embedded: refuse a
    k-means result that misses more (its samples would silently get no label and never train)."""
    missing = int((np.asarray(clusters) < 0).sum())
    if missing > bad:
        raise DataError(f"{where}: {missing} of {len(clusters)} samples have no cluster but only {bad} were "
                         f"counted bad when embedding: the embedding or k-means result is incomplete; recover "
                         f"with --redo {step} (it recomputes that step and every later one)")


def label_stats(labels: np.ndarray) -> dict:
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    sizes = sizes[sizes > 0]
    return {
        "num_labels": int(sizes.size),
        "median_size": float(np.median(sizes)) if sizes.size else 0.0,
        "mean_size": float(sizes.mean()) if sizes.size else 0.0,
        "max_size": int(sizes.max()) if sizes.size else 0,
        "num_singletons": int((sizes == 1).sum()),
        "missing": int((labels < 0).sum()),
    }


def save_labels(path: str, keys: np.ndarray, labels: np.ndarray, cluster_ids: np.ndarray,
                fingerprint: str) -> None:
    """Atomic npz: keys, labels, cluster_ids (stages x N) and the shards' fingerprint."""
    keys, labels = np.asarray(keys), np.asarray(labels, dtype=np.int64)
    cluster_ids = np.atleast_2d(np.asarray(cluster_ids, dtype=np.int64))
    if not (len(keys) == len(labels) == cluster_ids.shape[1]):
        raise ValueError(f"{path}: keys ({len(keys)}), labels ({len(labels)}) and cluster ids "
                         f"({cluster_ids.shape[1]}) must have the same length")
    save_npz(path, keys=keys, labels=labels, cluster_ids=cluster_ids, fingerprint=np.array(fingerprint))


def load_labels(path: str, expected_fingerprint: Optional[str] = None) -> dict:
    """{'keys', 'labels', 'cluster_ids', 'fingerprint'}; refuses labels of other shards."""
    z = load_npz(path)
    missing = {"keys", "labels", "cluster_ids", "fingerprint"} - set(z)
    if missing:
        raise ValueError(f"{path}: not a labels file (missing {sorted(missing)})")
    z["fingerprint"] = str(z["fingerprint"])
    if expected_fingerprint is not None and z["fingerprint"] != expected_fingerprint:
        raise ValueError(
            f"{path}: these labels belong to different shards (fingerprint {z['fingerprint'][:12]}..., "
            f"expected {expected_fingerprint[:12]}...): the shard list or its sample keys changed since "
            f"they were computed. Recompute the labels for the current data (delete the file or use a "
            f"new run directory).")
    return z


def export_csv(labels_path: str, out_csv: str) -> int:
    """Write `key,label` rows (atomic); returns the number of rows."""
    z = load_labels(labels_path)
    keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in z["keys"].tolist()]
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["key", "label"])
            w.writerows(zip(keys, z["labels"].tolist()))
    return len(keys)
