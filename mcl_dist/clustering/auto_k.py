"""`stages.N.k: auto`: the number of clusters of a stage chosen from its embeddings alone.

Rule `spread` (cluster.k_rule): run k-means for each of cluster.k_candidates in increasing order
(e.g. 8, 16, 32, 64, 128) and keep the smallest K whose next candidate lowers the within-cluster
spread (the k-means inertia) by less than cluster.k_min_gain of it. While K is below the number
of groups the embedding really has, a larger K separates groups and the spread falls steeply;
past it, a larger K only cuts groups in half, and in D dimensions halving a compact group
removes about 1/D of its spread. If every step still gains, the largest candidate is kept and
the result says `capped` (the k-means step logs a warning).

No labels are read. The chosen K and the whole curve (K, inertia, gain to the next candidate) go
into `stage_s/kmeans/kmeans.json` and the manifest. Whether this K beats a fixed one is measured by
the feature-suppression benchmark (tools/bench_feature_suppression.py, arms `*_kauto`), not assumed.
"""
from __future__ import annotations

from typing import Any

import torch

from mcl_dist.clustering.kmeans import KMeansResult, kmeans
from mcl_dist.config.origins import blame
from mcl_dist.config.registry import Choice
from mcl_dist.config.schema import Config, ConfigError
from mcl_dist.core import distributed as mdist


def _check_spread(cfg: Config, where: str) -> None:
    c = cfg.cluster
    ks = c.k_candidates
    if len(ks) < 2 or any(type(k) is not int or k < 2 for k in ks) or list(ks) != sorted(set(ks)):
        raise ConfigError(f"{blame(where, 'cluster.k_candidates')}: 'cluster.k_candidates' must be two or more "
                          f"increasing ints >= 2, got {ks}")
    if not 0.0 < c.k_min_gain < 1.0:
        raise ConfigError(f"{blame(where, 'cluster.k_min_gain')}: 'cluster.k_min_gain' must be in (0, 1), "
                          f"got {c.k_min_gain}")


K_RULES = {"spread": Choice(check=_check_spread)}


def global_rows(x: torch.Tensor) -> int:
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=mdist.comm_device())
    return int(mdist.all_reduce_sum(n).item())


def choose_k(x: torch.Tensor, candidates: list[int], min_gain: float, **kmeans_kw: Any) -> tuple[KMeansResult, dict]:
    """(the chosen K's k-means result, {"rule", "min_gain", "chosen", "curve": [{k, inertia, gain}]}).
    Every rank calls it with its own rows, like kmeans(); candidates above the row count are skipped."""
    n = global_rows(x)
    ks = [k for k in candidates if k <= n] or [min(n, candidates[0])]
    curve: list[dict] = []
    prev: KMeansResult | None = None
    chosen = None
    for k in ks:
        res = kmeans(x, k, **kmeans_kw)
        curve.append({"k": k, "inertia": res.inertia[-1], "gain": None})
        if prev is not None:
            before = curve[-2]["inertia"]
            gain = (before - curve[-1]["inertia"]) / before if before > 0 else 0.0
            curve[-2]["gain"] = gain
            if gain < min_gain:
                chosen = prev
                break
        prev = res
    # capped: every step still gained, so the rule found no K and kept the largest it tried. Both
    # benchmark families (1,200 and 1,440 easy combinations in 8,192 samples) cap at 128 on every
    # stage: the caller warns, since a capped K is the candidate list's choice, not the data's.
    capped = chosen is None and len(curve) > 1
    chosen = chosen or prev
    k = int(chosen.centroids.shape[0])
    return chosen, {"rule": "spread", "min_gain": min_gain, "chosen": k, "capped": capped, "curve": curve}
