"""What the group cutting of a stage drops, measured with the sampler's own plan, and the check.

A later stage's sampler (data/sampler.py plan_epoch) cuts every label into groups. With groups of
exactly the global micro-batch ("global" layout, one label per step), a label's remainder smaller
than a group is dropped, and a label smaller than a group never trains: with labels that combine
every earlier stage's clusters (10 x 10 x 10 at stage 3) that silently loses a third of the data.
With several groups per micro-batch ("local" layout) only one-sample labels are dropped.

The run measures the shares on its real labels (epoch 0's plan) and refuses a stage that drops
more than `train.max_dropped_share` of its samples. The dry run has no labels yet, so it plans the
same way on simulated labels from a stated model (`LABEL_MODEL`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mcl_dist.config.schema import Config, ConfigError, micro_batch_size
from mcl_dist.data.sampler import EpochPlan, plan_epoch

# the dry run's label-size model, said in its output
LABEL_MODEL = ("each label splits into the next stage's K clusters in shares as uneven as a random split "
               "(Dirichlet(1)), children under cluster.min_label_size fall back to their parent; "
               "k auto counts as the middle of cluster.k_candidates")


def drop_shares(plan: EpochPlan) -> dict[str, Any]:
    """Samples and labels the group cutting drops in this plan. The last incomplete step (`tail`)
    is not the cutting's doing (any drop_last loader loses it) and is counted apart."""
    st = plan.stats
    labelled = st["samples"] - st["excluded"]
    cut = st["dropped"] - st["tail"] + st["skipped_singletons"]
    kept = np.zeros(plan.order.size + 1, np.int64)  # +1 at each planned piece's start, -1 after its end
    np.add.at(kept, plan.piece_start, 1)
    np.add.at(kept, plan.piece_start + plan.piece_size, -1)
    planned = plan.order[np.cumsum(kept[:-1]) > 0]
    trained_labels = np.unique(plan.labels[planned]).size
    return {"samples": labelled, "sample_drop": cut, "sample_share": cut / max(1, labelled),
            "labels": st["num_labels"], "label_drop": st["num_labels"] - trained_labels,
            "label_share": (st["num_labels"] - trained_labels) / max(1, st["num_labels"]),
            "tail": st["tail"], "mode": plan.mode, "steps": plan.num_steps}


def describe(s: int, d: dict[str, Any]) -> str:
    return (f"stage {s}: group cutting drops {d['sample_share']:.1%} of samples ({d['sample_drop']:,} of "
            f"{d['samples']:,}) and {d['label_share']:.1%} of labels ({d['label_drop']:,} of {d['labels']:,} "
            f"never train); last partial step {d['tail']:,} samples; {d['steps']:,} steps an epoch")


def fix(cfg: Config, s: int, world: int) -> str:
    b = micro_batch_size(cfg, world)
    if cfg.stages[s].group_size > b:
        return (f"set stages.{s}.group_size <= {b} (several label groups per micro-batch: only one-sample "
                f"labels are dropped)")
    return f"raise cluster.min_label_size or lower stages.{s}.k (fewer one-sample labels)"


def check(cfg: Config, s: int, d: dict[str, Any], world: int) -> None:
    """The run's refusal: one line naming the share, the limit and the fix."""
    limit = cfg.train.max_dropped_share
    if d["sample_share"] > limit:
        raise ConfigError(f"stage {s}: the group cutting would drop {d['sample_share']:.1%} of the stage's samples "
                          f"and {d['label_share']:.1%} of its labels, more than train.max_dropped_share "
                          f"({limit:g}); {fix(cfg, s, world)}, or raise train.max_dropped_share")


def _k(cfg: Config, k: Any) -> int:
    cands = sorted(cfg.cluster.k_candidates)
    return int(cands[len(cands) // 2]) if k == "auto" else int(k)


def simulated_labels(cfg: Config, s: int, samples: int) -> np.ndarray:
    """Stage s's labels under LABEL_MODEL: one int per sample, sorted (the plan shuffles)."""
    rng = np.random.default_rng([cfg.train.seed, s])
    sizes = np.array([samples], np.int64)
    for st in cfg.stages[1:s + 1]:  # as clustering/pseudo_labels.py composes them: each label splits into K clusters
        k = _k(cfg, st.k)
        children = rng.multinomial(sizes, rng.dirichlet(np.ones(k), size=sizes.size))
        small = children < cfg.cluster.min_label_size
        parents = (children * small).sum(axis=1)  # small children fall back to their parent label
        sizes = np.concatenate([children[~small], parents[parents > 0]])
    return np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)


def estimate(cfg: Config, s: int, samples: int, world: int) -> dict[str, Any]:
    """The dry run's shares for stage s: the sampler's plan of epoch 0 on simulated labels."""
    t = cfg.train
    plan = plan_epoch(simulated_labels(cfg, s, samples), epoch=0, seed=t.seed + s, world_size=world,
                      micro_batch=micro_batch_size(cfg, world), accum=t.accum_freq,
                      group_size=cfg.stages[s].group_size)
    return drop_shares(plan)
