"""The cluster-bucketed batch planner: purity, coverage, determinism, resume, randomness, DataLoader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mcl_dist.data.sampler import PlannedBatchSampler, check_batch_log, plan_epoch

WORLD, MICRO, ACCUM = 2, 16, 2


def make_labels(sizes, excluded=0, seed=0):
    labels = np.concatenate([np.full(n, i, np.int64) for i, n in enumerate(sizes)])
    labels = np.concatenate([labels, np.full(excluded, -1, np.int64)])
    return np.random.default_rng(seed).permutation(labels)


def everything(plan):
    """[(step, micro_step, rank, indices, groups)] over all ranks."""
    out = []
    for rank in range(plan.world_size):
        for step, micro, idx, groups in plan.micro_batches(rank):
            out.append((step, micro, rank, idx, groups))
    return out


def check_plan(plan, labels, g, b):
    batches = everything(plan)
    idx = np.concatenate([x[3] for x in batches])
    groups = np.concatenate([x[4] for x in batches])
    assert len(np.unique(idx)) == idx.size, "a sample is planned twice"
    assert (labels[idx] >= 0).all()
    s = plan.stats
    assert idx.size == s["planned"] == s["samples"] - s["excluded"] - s["skipped_singletons"] - s["dropped"]
    for gid in np.unique(groups):
        members = labels[idx[groups == gid]]
        assert len(set(members.tolist())) == 1, f"group {gid} mixes labels"
        assert members.size >= 2, f"group {gid} has a single sample"
    for step, micro, rank, i, _ in batches:
        assert i.size <= b
    assert len(batches) == plan.num_steps * ACCUM * WORLD
    # the same trainer-side check, from the records a batch log would hold
    records = [{"epoch": 0, "step": st, "micro_step": m, "rank": r, "keys": [f"k{j}" for j in i.tolist()],
                "labels": labels[i].tolist(), "groups": gr.tolist()} for st, m, r, i, gr in batches]
    summary = check_batch_log(records)
    assert summary["samples"] == idx.size
    return batches


@pytest.mark.parametrize("g", [8, 16])
def test_local_mode_small_labels(g):
    sizes = [1, 3, 17, 500, 2, 33, 40, 9]
    labels = make_labels(sizes, excluded=5)
    plan = plan_epoch(labels, epoch=0, seed=1, world_size=WORLD, micro_batch=MICRO, accum=ACCUM, group_size=g)
    assert plan.mode == "local"
    s = plan.stats
    assert s["excluded"] == 5 and s["skipped_singletons"] == 1 and s["num_labels"] == len(sizes)
    batches = check_plan(plan, labels, g, MICRO)
    # dropped samples are only the last incomplete step (local mode loses nothing else)
    assert s["dropped"] < WORLD * ACCUM * MICRO
    assert s["groups_per_micro_batch"] > 1
    # near-equal cuts: 17 -> 9+8 (g=16) / 6+6+5 (g=8), never a lone sample; pieces < g are counted
    assert 0 < s["short_group_share"] < 1
    sizes_seen = np.bincount(np.concatenate([x[4] for x in batches]))
    assert sizes_seen[sizes_seen > 0].min() >= 2


def test_one_huge_cluster_and_one_below_group_size():
    labels = make_labels([2000, 5])
    plan = plan_epoch(labels, epoch=3, seed=0, world_size=WORLD, micro_batch=MICRO, accum=ACCUM, group_size=8)
    check_plan(plan, labels, 8, MICRO)
    assert plan.stats["planned"] > 1900
    planned = np.concatenate([x[3] for x in everything(plan)])
    assert (labels[planned] == 1).sum() in (0, 5)  # the small label travels as one group of 5


def test_global_mode_group_spans_ranks():
    g = MICRO * WORLD
    sizes = [1, 3, 17, 500, 100, 64]
    labels = make_labels(sizes)
    plan = plan_epoch(labels, epoch=0, seed=2, world_size=WORLD, micro_batch=MICRO, accum=ACCUM, group_size=g)
    assert plan.mode == "global"
    batches = check_plan(plan, labels, g, MICRO)
    s = plan.stats
    assert s["skipped_singletons"] == 1 and s["short_group_share"] == 0
    # remainders below g (3, 17, 500 % 32, 100 % 32) plus at most one incomplete step are dropped
    remainders = 3 + 17 + 500 % g + 100 % g
    assert remainders <= s["dropped"] < remainders + ACCUM * g
    by_slot = {}
    for step, micro, rank, idx, groups in batches:
        assert idx.size == MICRO and len(set(groups.tolist())) == 1
        by_slot.setdefault((step, micro), []).append((groups[0], labels[idx[0]]))
    for slot in by_slot.values():  # every rank serves the same group (and label) at a micro-step
        assert len(slot) == WORLD and len(set(slot)) == 1


def test_invalid_group_size():
    with pytest.raises(ValueError, match=r"group_size <= 16 .* group_size == 32"):
        plan_epoch(make_labels([50]), epoch=0, seed=0, world_size=2, micro_batch=16, accum=1, group_size=20)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        plan_epoch(make_labels([50]), epoch=0, seed=0, world_size=2, micro_batch=16, accum=1, group_size=1)


def test_group_size_two_never_leaves_a_lone_sample():
    labels = make_labels([3, 5, 7, 2, 9])
    plan = plan_epoch(labels, epoch=0, seed=0, world_size=1, micro_batch=2, accum=1, group_size=2)
    idx = np.concatenate([i for _, _, i, _ in plan.micro_batches(0)])
    groups = np.concatenate([gr for _, _, _, gr in plan.micro_batches(0)])
    assert np.bincount(groups)[np.unique(groups)].min() >= 2
    assert idx.size == plan.stats["planned"] == 26 - plan.stats["dropped"]


def flat_labels(plan):
    """Label sequence of the epoch, in serving order over (step, micro, rank)."""
    seq = []
    for step in range(plan.num_steps):
        for micro in range(plan.accum):
            for rank in range(plan.world_size):
                idx, _ = plan.micro_batch(step, micro, rank)
                seq.append(plan.labels[idx])
    return np.concatenate(seq)


def test_determinism_epochs_and_randomness():
    sizes = [1, 3, 17, 500, 60, 45, 90, 33, 25, 120]
    labels = make_labels(sizes)
    kw = dict(seed=7, world_size=WORLD, micro_batch=MICRO, accum=ACCUM, group_size=8)
    a, b, c = plan_epoch(labels, epoch=0, **kw), plan_epoch(labels, epoch=0, **kw), plan_epoch(labels, epoch=1, **kw)
    ea, eb, ec = everything(a), everything(b), everything(c)
    assert all(np.array_equal(x[3], y[3]) and np.array_equal(x[4], y[4]) for x, y in zip(ea, eb))
    assert not all(np.array_equal(x[3], y[3]) for x, y in zip(ea, ec))
    seq = flat_labels(a)
    # label runs (consecutive groups of one label) are not a fixed cycle of labels
    runs = seq[np.r_[True, seq[1:] != seq[:-1]]]
    for period in range(1, len(sizes) + 1):
        assert not np.array_equal(runs[period:], runs[:-period]), f"label order repeats with period {period}"
    # the largest label (index 3) is spread over the epoch, not left to its end
    pos = np.flatnonzero(seq == 3) / seq.size
    assert 0.35 < pos.mean() < 0.65 and pos.min() < 0.1 and pos.max() > 0.9
    # and labels appear in proportion: the big one is in most micro-batches of the first quarter
    first = seq[: seq.size // 4]
    assert abs((first == 3).mean() - 500 / sum(sizes)) < 0.15


def test_resume_gives_the_tail():
    labels = make_labels([1, 3, 17, 500, 60, 45])
    plan = plan_epoch(labels, epoch=2, seed=3, world_size=WORLD, micro_batch=MICRO, accum=ACCUM, group_size=8)
    for rank in range(WORLD):
        full = list(PlannedBatchSampler(plan, rank=rank))
        assert len(full) == len(PlannedBatchSampler(plan, rank=rank)) == plan.num_steps * ACCUM
        for start in (0, 1, plan.num_steps // 2, plan.num_steps):
            tail = list(PlannedBatchSampler(plan, rank=rank, start_step=start))
            assert tail == full[start * ACCUM:]
            assert len(PlannedBatchSampler(plan, rank=rank, start_step=start)) == len(tail)
    again = PlannedBatchSampler(labels, rank=1, start_step=1, epoch=2, seed=3, world_size=WORLD,
                                micro_batch=MICRO, accum=ACCUM, group_size=8)
    assert list(again) == list(PlannedBatchSampler(plan, rank=1, start_step=1))
    with pytest.raises(ValueError):
        PlannedBatchSampler(plan, rank=0, start_step=plan.num_steps + 1)


class Echo(Dataset):
    def __len__(self):
        return 10**6

    def __getitem__(self, item):
        i, label, group = item
        return torch.tensor([i, label, group])


def test_dataloader_with_workers_keeps_the_plan():
    labels = make_labels([3, 17, 200, 60, 45])
    plan = plan_epoch(labels, epoch=0, seed=0, world_size=WORLD, micro_batch=MICRO, accum=ACCUM, group_size=8)
    sampler = PlannedBatchSampler(plan, rank=1, start_step=1)
    loader = DataLoader(Echo(), batch_sampler=sampler, num_workers=2)
    got = [b.tolist() for b in loader]
    want = [[list(t) for t in batch] for batch in sampler]
    assert got == want and len(got) == len(sampler)
    for batch in got:
        i, lab, _ = zip(*batch)
        assert list(labels[list(i)]) == list(lab)


def test_check_batch_log_catches_violations():
    rec = {"epoch": 0, "step": 0, "micro_step": 0, "rank": 0, "keys": ["a", "b", "c", "d"],
           "labels": [1, 1, 2, 2], "groups": [0, 0, 1, 1]}
    assert check_batch_log([rec])["groups"] == 2
    with pytest.raises(AssertionError, match="mixes labels"):
        check_batch_log([dict(rec, labels=[1, 2, 2, 2])])
    with pytest.raises(AssertionError, match="1 sample"):
        check_batch_log([dict(rec, groups=[0, 0, 1, 2])])
    with pytest.raises(AssertionError, match="served twice in epoch 0"):
        check_batch_log([rec, dict(rec, step=1, groups=[5, 5, 6, 6])])
    assert check_batch_log([rec, dict(rec, epoch=1)])["epochs"] == 2  # a new epoch may repeat keys
