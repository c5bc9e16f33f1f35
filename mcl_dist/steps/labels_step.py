"""stage_s/labels (rank 0): this stage's clusters combined with every earlier stage's into
pseudo-labels keyed by sample (mcl_dist/clustering/pseudo_labels.py); writes `stage_s/labels.npz`."""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass

import numpy as np

from mcl_dist.clustering.embedding import embedded_bad
from mcl_dist.clustering.pseudo_labels import check_complete, compose_labels, label_stats, load_labels, save_labels
from mcl_dist.clustering.stop_signal import split_signal
from mcl_dist.core import layout
from mcl_dist.core.files import load_npz
from mcl_dist.integration.stage_similarity import cka_to_earlier, embed_dirs_until, embedded_features
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step import StageStep
from mcl_dist.steps.step_helpers import redo_hint

log = logging.getLogger("mcl_dist")


def clusters_in_index_order(ctx: RunContext, s: int, index) -> np.ndarray:
    out = np.full(len(index), -1, np.int64)
    for path in sorted(glob.glob(layout.assignments_glob(layout.kmeans_dir(ctx.run_dir, s)))):
        part = load_npz(path)
        where = index.key_to_index(part["keys"])
        known = where >= 0
        out[where[known]] = part["clusters"][known]
    return out


def shuffled(labels: np.ndarray, seed: int, stage: int) -> np.ndarray:
    """The labels permuted over the samples that have one (seeded): every group keeps its size, so
    each anchor keeps as many negatives, but what a group holds is random (the random-label control)."""
    out, valid = labels.copy(), np.flatnonzero(labels >= 0)
    out[valid] = labels[valid][np.random.default_rng([seed, stage, 7]).permutation(valid.size)]
    return out


@dataclass
class LabelsStep(StageStep):
    kind = "labels"
    main_only = True

    def result_settings(self) -> dict:
        out = {"min_label_size": self.cfg.cluster.min_label_size}
        if self.cfg.cluster.shuffle_labels:  # only when on: earlier runs keep their fingerprint
            out["shuffle_labels"] = True
        return out

    def outputs(self, run_dir: str, world: int) -> list[str]:
        return [layout.labels_path(run_dir, self.stage)]

    def describe(self, world: int) -> str:
        return (f"stage {self.stage} clusters x stages {list(range(1, self.stage))} labels, smaller than "
                f"{self.cfg.cluster.min_label_size} fall back to their parent") if self.stage > 1 else \
            f"stage 1 clusters, smaller than {self.cfg.cluster.min_label_size} fall back to one label"

    def run(self, ctx: RunContext) -> dict:
        """Rank 0 only (a main_only step): the others wait outside any collective."""
        s = self.stage
        index = ctx.load_index(progress=True)
        rows, current = [], np.zeros(len(index), np.int64)  # stage 1 splits the root label
        if s > 1:
            try:
                prev = load_labels(layout.labels_path(ctx.run_dir, s - 1), index.fingerprint())
            except (ValueError, RuntimeError, FileNotFoundError) as e:
                raise redo_hint(e, layout.step_name("labels", s - 1)) from None
            rows, current = list(prev["cluster_ids"]), prev["labels"]
        rows.append(clusters_in_index_order(ctx, s, index))
        check_complete(rows[-1], embedded_bad(ctx.run_dir, s), layout.kmeans_dir(ctx.run_dir, s),
                       layout.step_name("embed", s))
        labels = compose_labels(rows, min_label_size=ctx.cfg.cluster.min_label_size)
        if ctx.cfg.cluster.shuffle_labels:
            labels = shuffled(labels, ctx.cfg.train.seed, s)
        save_labels(layout.labels_path(ctx.run_dir, s), index.keys, labels, np.stack(rows), index.fingerprint())
        signal = split_signal(current, rows[-1], ctx.cfg.cluster.min_label_size)
        if s > 1:  # stage s-1 (just trained) against stages 0..s-2: did it learn something new?
            signal["cka_prev"] = cka_to_earlier(embedded_features(embed_dirs_until(ctx.run_dir, s),
                                                                  seed=ctx.cfg.train.seed))[-1]
        stats = {**label_stats(labels), **{f"signal/{k}": v for k, v in signal.items()}}
        log.info("stage %d labels: %s", s, stats)
        return stats
