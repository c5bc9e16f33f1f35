"""The cluster-bucketed distributed batch planner: which samples each rank reads at each step,
and the batch log that shows, after the fact, that every group held one label.

Stages >= 1 need every sample's in-batch negatives to share its pseudo-label. Per epoch we bucket
the sample indices by label, shuffle inside buckets, cut buckets into groups and shuffle the
groups, so labels appear in proportion to their sizes at random places in the epoch (the public
reference visits clusters round-robin, which leaves the big clusters alone at the end).

Two layouts, chosen by the group size g against the per-rank micro-batch b:
- local (g <= b, the normal case from stage 2 on, where labels are ~20 samples): several groups
  are packed into each rank's micro-batch; the label-masked loss keeps negatives inside each
  label, so no all-gather is needed.
- global (g == b * world): one group fills the global micro-batch, each rank holds an equal
  slice of it and the loss gathers features across ranks.

`group_layout` is the one statement of that rule; the config check uses it too.

The plan is pure numpy and a function of (labels, seed, epoch, shape) only, so every rank computes
the same plan without communicating. Memory: one permutation of the sample indices plus a few
ints per group; every group is a contiguous range of that permutation. The module imports no
torch (only for type hints) and nothing of the project, so the config check can use `group_layout`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional, Union

import numpy as np

if TYPE_CHECKING:
    import torch

LOOKAHEAD = 16  # groups searched for one that fills the rest of a micro-batch


@dataclass
class EpochPlan:
    labels: np.ndarray
    order: np.ndarray  # shuffled sample indices; each piece is order[start:start+size]
    piece_start: np.ndarray
    piece_size: np.ndarray
    piece_group: np.ndarray  # global group id of each piece
    mb_ptr: np.ndarray  # pieces of micro-batch j: mb_ptr[j]..mb_ptr[j+1]
    world_size: int
    accum: int
    num_steps: int
    mode: str  # "local" (g <= b) or "global" (g == b * world, the loss gathers)
    stats: dict = field(default_factory=dict)

    def micro_batch_id(self, step: int, micro_step: int, rank: int) -> int:
        # consecutive micro-batches go to consecutive ranks, so all ranks have the same steps
        return (step * self.accum + micro_step) * self.world_size + rank

    def micro_batch(self, step: int, micro_step: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        j = self.micro_batch_id(step, micro_step, rank)
        lo, hi = int(self.mb_ptr[j]), int(self.mb_ptr[j + 1])
        starts, sizes = self.piece_start[lo:hi], self.piece_size[lo:hi]
        idx = np.concatenate([self.order[s: s + z] for s, z in zip(starts.tolist(), sizes.tolist())])
        return idx.astype(np.int64), np.repeat(self.piece_group[lo:hi], sizes).astype(np.int64)

    def micro_batches(self, rank: int, start_step: int = 0) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """(step, micro_step, indices, groups) of one rank, in order, from start_step on."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} out of range for world size {self.world_size}")
        for step in range(start_step, self.num_steps):
            for micro in range(self.accum):
                idx, groups = self.micro_batch(step, micro, rank)
                yield step, micro, idx, groups


def group_layout(group_size: int, micro_batch: int, world_size: int) -> Optional[str]:
    """Where a label group sits: "local" (inside one rank's micro-batch, no gather), "global"
    (exactly the global micro-batch, the loss gathers features), or None when it fits neither."""
    if group_size <= micro_batch:
        return "local"
    if group_size == micro_batch * world_size:
        return "global"
    return None


def _check_shape(world_size: int, micro_batch: int, accum: int, group_size: int) -> str:
    if world_size < 1 or micro_batch < 1 or accum < 1:
        raise ValueError(f"world_size, micro_batch and accum must be >= 1, got {world_size}, {micro_batch}, {accum}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a sample needs a negative), got {group_size}")
    mode = group_layout(group_size, micro_batch, world_size)
    if mode is not None:
        return mode
    raise ValueError(
        f"group_size {group_size} does not fit micro_batch {micro_batch} x world_size {world_size}: use "
        f"group_size <= {micro_batch} (several label groups per rank micro-batch, no gather; the normal "
        f"choice) or group_size == {micro_batch * world_size} (one group per global micro-batch, the loss "
        f"gathers features across ranks)")


def _buckets(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid indices sorted by label, shuffled inside each label; bucket starts and sizes."""
    valid = np.flatnonzero(labels >= 0)
    dtype = np.int32 if labels.size < 2**31 else np.int64
    perm = valid[rng.permutation(valid.size)].astype(dtype)
    keys = labels[perm]
    if keys.size and keys.max() < 2**16:  # the same stable order; numpy radix-sorts 16-bit keys, ~3x faster
        keys = keys.astype(np.uint16)
    order = perm[np.argsort(keys, kind="stable")]
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]]) if lab.size else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, lab.size])
    return order, starts, sizes


def _cut(starts: np.ndarray, sizes: np.ndarray, g: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Group starts and sizes per bucket: exactly g (remainders dropped), or ceil(n/g) near-equal
    groups whose sizes differ by <= 1 (33 -> 17+16, never a lone sample)."""
    if exact:
        k = sizes // g
    else:  # fewer groups where ceil(n/g) would leave one of a single sample (only g == 2, n odd)
        k = np.maximum(1, np.minimum(-(-sizes // g), sizes // 2))
    bucket = np.repeat(np.arange(sizes.size), k)
    i = np.arange(bucket.size) - np.repeat(np.cumsum(k) - k, k)  # group number inside its bucket
    n, kk = sizes[bucket], k[bucket]
    base = g if exact else n // kk
    extra = 0 if exact else n % kk
    gsize = base + (i < extra)
    gstart = starts[bucket] + i * base + np.minimum(i, extra)
    return gstart.astype(np.int64), np.broadcast_to(gsize, bucket.shape).astype(np.int64)


def _pack(gstart: np.ndarray, gsize: np.ndarray, b: int) -> tuple[list, list, list, int]:
    """Fill micro-batches of capacity b with groups in order; returns pieces, CSR pointers, dropped.

    A group that does not fit the remaining space r is split (r + rest) when both pieces keep
    >= 2 samples; otherwise a later group (bounded look-ahead) that fits is taken first; otherwise
    the micro-batch closes short. A remaining space of 1 closes it at once (no group has 1 sample).
    """
    starts, sizes = gstart.tolist(), gsize.tolist()
    n, used = len(starts), bytearray(len(starts))
    ps, pz, ptr = [], [], [0]
    head, r, dropped = 0, b, 0

    def take(j: int, m: int) -> None:
        ps.append(starts[j])
        pz.append(m)
        starts[j] += m
        sizes[j] -= m
        if sizes[j] == 0:
            used[j] = 1

    while True:
        while head < n and used[head]:
            head += 1
        if head == n:
            break
        s = sizes[head]
        if s <= r:
            take(head, s)
            r -= s
        elif r >= 2 and s - r >= 2:
            take(head, r)
            r = 0
        else:
            j, seen = head + 1, 0
            while j < n and seen < LOOKAHEAD and (used[j] or sizes[j] > r):
                seen += 0 if used[j] else 1
                j += 1
            if j < n and seen < LOOKAHEAD:
                r -= sizes[j]
                take(j, sizes[j])
            elif r - 1 >= 2 and s - (r - 1) >= 2:
                take(head, r - 1)
                r = 0
            elif r == b:  # an empty micro-batch and a group of b + 1 (only when g = b = 2)
                take(head, b)
                dropped += sizes[head]
                sizes[head], used[head] = 0, 1
                r = 0
            else:
                r = 0  # nothing fits: close the micro-batch short
        if r < 2:  # no group has a single sample, so one free slot stays empty
            ptr.append(len(ps))
            r = b
    if len(ps) > ptr[-1]:
        ptr.append(len(ps))
    return ps, pz, ptr, dropped


def plan_epoch(labels: np.ndarray, *, epoch: int, seed: int, world_size: int, micro_batch: int,
               accum: int = 1, group_size: int = 32) -> EpochPlan:
    """The plan of one epoch; identical on every rank for the same arguments."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    mode = _check_shape(world_size, micro_batch, accum, group_size)
    rng = np.random.default_rng([int(seed), int(epoch)])
    order, bstart, bsize = _buckets(labels, rng)
    singles = bsize == 1  # a label of one sample has no negative: skipped
    gstart, gsize = _cut(bstart[~singles], bsize[~singles], group_size, exact=mode == "global")
    perm = rng.permutation(gstart.size)  # groups in random order, never round-robin by label
    gstart, gsize = gstart[perm], gsize[perm]
    remainder = int(bsize[~singles].sum() - gsize.sum())
    if mode == "local":
        ps, pz, ptr, pack_dropped = _pack(gstart, gsize, micro_batch)
        ps, pz, ptr = np.asarray(ps, np.int64), np.asarray(pz, np.int64), np.asarray(ptr, np.int64)
        pg = np.arange(ps.size, dtype=np.int64)  # every piece is its own group
        remainder += pack_dropped
    else:  # each group spans the global micro-batch: rank r holds slice r of it
        ranks = np.arange(world_size)
        ps = (gstart[:, None] + ranks[None, :] * micro_batch).reshape(-1)
        pz = np.full(ps.size, micro_batch, np.int64)
        pg = np.repeat(np.arange(gstart.size, dtype=np.int64), world_size)
        ptr = np.arange(ps.size + 1, dtype=np.int64)
    per_step = world_size * accum
    num_steps = (ptr.size - 1) // per_step
    ptr = ptr[: num_steps * per_step + 1]  # the last incomplete step is dropped
    kept = int(ptr[-1])
    tail = int(pz[kept:].sum())
    ps, pz, pg = ps[:kept], pz[:kept], pg[:kept]
    short = int(pz[pz < group_size].sum()) if mode == "local" else 0  # global groups are exactly g
    stats = {
        "samples": int(labels.size),
        "excluded": int((labels < 0).sum()),
        "skipped_singletons": int(singles.sum()),
        "dropped": remainder + tail,
        "tail": tail,  # samples of the last incomplete step (not the group cutting's doing)
        "planned": int(pz.sum()),
        "num_steps": int(num_steps),
        "short_group_share": short / max(1, int(pz.sum())),
        "groups_per_micro_batch": pz.size / max(1, num_steps * per_step) if mode == "local" else 1.0,
        "num_labels": int(bsize.size),
        "median_label_size": float(np.median(bsize)) if bsize.size else 0.0,
        "mode": mode,
    }
    return EpochPlan(labels, order, ps, pz, pg, ptr, world_size, accum, num_steps, mode, stats)


class PlannedBatchSampler:
    """One rank's micro-batches as lists of (sample_index, label, group) for DataLoader(batch_sampler=).

    The batch sampler runs in the main process, so any number of DataLoader workers read exactly
    these batches, in this order. start_step resumes mid-epoch. DataLoader only needs an iterable
    with a length here, so this is no torch Sampler subclass.
    """

    def __init__(self, plan: Union[EpochPlan, np.ndarray], rank: int = 0, start_step: int = 0, **plan_kwargs):
        self.plan = plan if isinstance(plan, EpochPlan) else plan_epoch(plan, **plan_kwargs)
        if not 0 <= start_step <= self.plan.num_steps:
            raise ValueError(f"start_step {start_step} outside the epoch's {self.plan.num_steps} steps")
        if not 0 <= rank < self.plan.world_size:
            raise ValueError(f"rank {rank} out of range for world size {self.plan.world_size}")
        self.rank, self.start_step = rank, start_step

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        labels = self.plan.labels
        for _, _, idx, groups in self.plan.micro_batches(self.rank, self.start_step):
            yield list(zip(idx.tolist(), labels[idx].tolist(), groups.tolist()))

    def __len__(self) -> int:
        return (self.plan.num_steps - self.start_step) * self.plan.accum


# -- the batch log (debug.log_batches) -------------------------------------------------------
def write_batch_record(path: str, step: int, micro: int, rank: int, batch: dict) -> None:
    """Append one micro-batch as one JSON line: what `check_batch_log` reads back."""
    record = {"epoch": batch.get("epoch", 0), "step": step, "micro_step": micro, "rank": rank,
              "keys": list(batch["key"])}
    if batch.get("labels") is not None:
        record["labels"] = batch["labels"].tolist()
        record["groups"] = batch["groups"].tolist()
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def group_purity(labels: Optional[torch.Tensor], groups: Optional[torch.Tensor]) -> float:
    """Mean over groups of the majority label's share: 1.0 when every group is single-label."""
    if labels is None or groups is None or len(groups) == 0:
        return 1.0
    total = 0.0
    ids = groups.unique()
    for g in ids:
        lab = labels[groups == g]
        total += lab.bincount().max().item() / len(lab) if lab.min() >= 0 else 0.0
    return total / len(ids)


def check_batch_log(records, min_group_size: int = 2) -> dict:
    """Verify a batch log (dicts with epoch, step, micro_step, rank, keys, labels, groups).

    Every group must hold one label and >= min_group_size samples (across ranks: a global group
    spans them), and no key may be served twice in one epoch. Raises AssertionError naming the
    first violation; returns a summary.
    """
    groups: dict = {}  # (epoch, group) -> [label, count, where]
    seen: dict = {}  # epoch -> {key: where}
    n_records, n_samples, pieces = 0, 0, 0
    for rec in records:
        e = rec.get("epoch", 0)
        where = f"epoch {e} step {rec['step']} micro_step {rec['micro_step']} rank {rec['rank']}"
        keys, labels, gids = rec["keys"], rec.get("labels"), rec.get("groups")
        if labels is None or gids is None:
            raise AssertionError(f"{where}: record has no labels/groups (not a planned batch)")
        if not len(keys) == len(labels) == len(gids):
            raise AssertionError(f"{where}: {len(keys)} keys, {len(labels)} labels, {len(gids)} groups")
        keys_seen = seen.setdefault(e, {})
        for k, lab, g in zip(keys, labels, gids):
            if lab < 0:
                raise AssertionError(f"{where}: key {k!r} has no pseudo-label ({lab})")
            if k in keys_seen:
                raise AssertionError(f"key {k!r} served twice in epoch {e}: at {keys_seen[k]} and at {where}")
            keys_seen[k] = where
            entry = groups.setdefault((e, g), [lab, 0, where])
            if entry[0] != lab:
                raise AssertionError(f"group {g} of epoch {e} mixes labels {entry[0]} ({entry[2]}) and {lab} "
                                     f"({where}): its negatives are not same-label")
            entry[1] += 1
        n_records, n_samples, pieces = n_records + 1, n_samples + len(keys), pieces + len(set(gids))
    for (e, g), (lab, count, where) in groups.items():
        if count < min_group_size:
            raise AssertionError(f"group {g} of epoch {e} (label {lab}, {where}) has {count} sample(s), "
                                 f"fewer than {min_group_size}: a sample without a same-label negative")
    sizes = [c for _, c, _ in groups.values()]
    return {"records": n_records, "samples": n_samples, "groups": len(groups), "epochs": len(seen),
            "min_group_size": min(sizes) if sizes else 0,
            "mean_group_size": float(np.mean(sizes)) if sizes else 0.0,
            "groups_per_micro_batch": pieces / max(1, n_records), "label_purity": 1.0}
