"""A label-free signal of whether another MCL stage still has something to learn.

After stage s-1 trains with pseudo-labels L (negatives only inside a label), k-means on its
embeddings gives new clusters C. If stage s-1 learned something that varies *inside* the labels
of L, C cuts across L: the new clusters split many labels and share little information with them
(low normalised mutual information). If it learned nothing new, its embedding is still organised
by what L already separates, C re-draws L's borders (high NMI) and few labels split.

Two more signals of what the next stage would learn: the share of pseudo-labels (and samples)
that survive `min_label_size` (`survived_*`: combinations too small fall back to their parent, so
a low share means the next stage mostly repeats the last one's negatives), and the linear CKA of
the stage just trained with the earlier stages' features (`cka_prev`, mcl_dist/integration/stage_similarity.py;
the labels step adds it from stage 2 on: near 1, that stage learned nothing new).

None of these numbers needs attribute labels, so both can be logged on real data (`stage_s/labels` in
the manifest, and the report). Whether they predict that one more stage helps is measured by the
feature-suppression benchmark (docs/results.md), not assumed: on 3 seeds of two data families no rule
built on them picked the stage count as well as a fixed count, so they are logged, not acted on.
"""
from __future__ import annotations

import numpy as np


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI with the arithmetic-mean normalisation (scikit-learn's default); 1.0 when both
    labelings are constant (nothing to tell apart), 0.0 when one of them is.

    Ours, not sklearn.metrics.normalized_mutual_info_score: scikit-learn (and scipy) is not a
    dependency of the trainer, only of the bench/dev extras; tests/test_stop_signal.py checks that
    both give the same value."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"normalized_mutual_info: {a.size} vs {b.size} labels")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ha, hb = _entropy(np.bincount(ai)), _entropy(np.bincount(bi))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    if ha == 0.0 or hb == 0.0:
        return 0.0
    _, joint = np.unique(ai.astype(np.int64) * (bi.max() + 1) + bi, return_counts=True)
    mi = ha + hb - _entropy(joint)
    return float(np.clip(mi / ((ha + hb) / 2), 0.0, 1.0))


def split_signal(labels: np.ndarray, clusters: np.ndarray, min_label_size: int) -> dict:
    """How much the new k-means `clusters` split the current pseudo-`labels` (-1 = missing).

    A label *splits* when at least two new clusters each hold `min_label_size` or more of its
    samples, i.e. when combining the two would give it two usable children (pseudo_labels.py's rule).
    Returns nmi, the share of labels (and of samples) that split, the number of labels before
    and after combining, and the share of combinations (and of samples) that survive.
    """
    labels, clusters = np.asarray(labels).reshape(-1), np.asarray(clusters).reshape(-1)
    if labels.size != clusters.size:
        raise ValueError(f"split_signal: {labels.size} labels vs {clusters.size} cluster ids")
    ok = (labels >= 0) & (clusters >= 0)
    lab, clu = labels[ok].astype(np.int64), clusters[ok].astype(np.int64)
    if lab.size == 0:
        return {"nmi": float("nan"), "split_labels": 0.0, "split_samples": 0.0, "labels_before": 0, "labels_after": 0,
                "survived_labels": 0.0, "survived_samples": 0.0}
    pairs, counts = np.unique(lab * (clu.max() + 1) + clu, return_counts=True)
    parent = pairs // (clu.max() + 1)
    big = counts >= min_label_size
    usable = np.bincount(parent[big], minlength=lab.max() + 1)  # usable children per label
    sizes = np.bincount(lab)
    present = sizes > 0
    split = (usable >= 2) & present
    return {"nmi": normalized_mutual_info(lab, clu),
            "split_labels": float(split.sum() / present.sum()),
            "split_samples": float(sizes[split].sum() / sizes.sum()),
            "labels_before": int(present.sum()),
            # pseudo_labels.py's rule: every usable child, plus one fallback label per parent with small children
            "labels_after": int(big.sum() + np.unique(parent[~big]).size),
            # (label, cluster) combinations that keep their own label, and the samples in them
            "survived_labels": float(big.mean()), "survived_samples": float(counts[big].sum() / counts.sum())}
