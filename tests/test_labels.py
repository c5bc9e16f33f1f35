"""Pseudo-labels: recursive combination with parent fallback, against a brute-force reference."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from mcl_dist.clustering.pseudo_labels import compose_labels, export_csv, label_stats, load_labels, save_labels
from mcl_dist.data.tar_index import keys_fingerprint

import forked_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_labels(cluster_ids, m):
    """Tuples built stage by stage in plain Python; small combinations keep their parent's tuple
    plus a 'fallback' marker, which is the same partition as keeping the parent's label."""
    n = len(cluster_ids[0])
    cur = [() for _ in range(n)]
    missing = [any(c[i] < 0 for c in cluster_ids) for i in range(n)]
    for c in cluster_ids:
        pairs = [cur[i] + (int(c[i]),) for i in range(n)]
        counts: dict = {}
        for i in range(n):
            if not missing[i]:
                counts[pairs[i]] = counts.get(pairs[i], 0) + 1
        cur = [pairs[i] if not missing[i] and counts[pairs[i]] >= m else cur[i] + ("parent",) for i in range(n)]
    return [None if missing[i] else cur[i] for i in range(n)]


def same_partition(labels, ref):
    forward, backward = {}, {}
    for a, b in zip(labels.tolist(), ref):
        if (a == -1) != (b is None):
            return False
        if b is None:
            continue
        if forward.setdefault(a, b) != b or backward.setdefault(b, a) != a:
            return False
    return True


def uneven_clusters(rng, n, k):
    p = rng.dirichlet(np.full(k, 0.3))  # very uneven cluster sizes, some tiny
    return rng.choice(k, size=n, p=p)


@pytest.mark.parametrize("m", [1, 4, 10])
def test_compose_matches_bruteforce(m):
    rng = np.random.default_rng(m)
    n = 3000
    stages = [uneven_clusters(rng, n, k) for k in (5, 8, 12)]
    stages[1][rng.choice(n, 20, replace=False)] = -1  # samples missing in one stage
    labels = compose_labels(stages, min_label_size=m)
    ref = reference_labels(stages, m)
    assert labels.dtype == np.int64
    assert same_partition(labels, ref)
    assert sorted(set(labels[labels >= 0].tolist())) == list(range(len(set(labels[labels >= 0].tolist()))))
    assert (labels == -1).sum() == 20
    assert np.array_equal(labels, compose_labels(stages, min_label_size=m))  # deterministic
    if m > 1:  # the fallback actually happened (otherwise the test would prove nothing)
        full = compose_labels(stages, min_label_size=1)
        assert len(np.unique(labels)) < len(np.unique(full))


def test_fallback_rule_small_example():
    c0 = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # cluster 1 (2 samples) is too small -> root label
    c1 = np.array([0, 0, 0, 0, 1, 2, 0, 0])  # (0,1) and (0,2) too small -> back to parent (0,)
    lab = compose_labels([c0, c1], min_label_size=3)
    assert lab[0] == lab[1] == lab[2] == lab[3]  # (0, 0)
    assert lab[4] == lab[5] != lab[0]  # the small children of cluster 0 share the parent label
    assert lab[6] == lab[7] and len({lab[0], lab[4], lab[6]}) == 3
    assert label_stats(lab) == {"num_labels": 3, "median_size": 2.0, "mean_size": 8 / 3, "max_size": 4,
                                "num_singletons": 0, "missing": 0}


def test_combines_with_earlier_stages_not_itself():
    """Stage-1 label = (stage-0 cluster, stage-1 cluster): the public code's bug would ignore c0."""
    c0 = np.repeat([0, 1], 8)
    c1 = np.tile(np.repeat([0, 1], 4), 2)
    lab = compose_labels([c0, c1], min_label_size=2)
    assert len(np.unique(lab)) == 4
    assert lab[0] != lab[8]  # same stage-1 cluster, different stage-0 cluster


def test_save_load_fingerprint(tmp_path):
    keys = np.array([f"k{i:04d}" for i in range(50)])
    stages = np.stack([np.arange(50) % 3, np.arange(50) % 5])
    labels = compose_labels(list(stages))
    fp = keys_fingerprint(["/data/a.tar", "/data/b.tar"], keys)
    path = str(tmp_path / "labels.npz")
    save_labels(path, keys, labels, stages, fp)
    z = load_labels(path, fp)
    assert np.array_equal(z["labels"], labels) and np.array_equal(z["cluster_ids"], stages)
    assert z["fingerprint"] == fp and list(z["keys"]) == list(keys)
    other = keys_fingerprint(["/data/a.tar", "/data/c.tar"], keys)
    assert other != fp and keys_fingerprint(["x/a.tar", "y/b.tar"], keys) == fp  # basenames only
    assert keys_fingerprint(["a.tar", "b.tar"], keys[::-1]) != fp  # key order matters
    with pytest.raises(ValueError, match=r"labels\.npz: these labels belong to different shards"):
        load_labels(path, other)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_fingerprint_matches_bytes_keys():
    keys = np.array([f"k{i}" for i in range(10)])
    assert keys_fingerprint(["a.tar"], keys) == keys_fingerprint(["a.tar"], np.char.encode(keys, "utf-8"))


def test_export_csv_and_cli(tmp_path):
    keys = np.array(["a", "b", "c", "d"])
    labels = np.array([1, 0, -1, 1])
    path = str(tmp_path / "labels.npz")
    save_labels(path, keys, labels, np.array([[0, 1, -1, 0]]), "fp")
    out = str(tmp_path / "out.csv")
    assert export_csv(path, out) == 4
    with open(out) as f:
        rows = list(csv.reader(f))
    assert rows == [["key", "label"], ["a", "1"], ["b", "0"], ["c", "-1"], ["d", "1"]]
    out2 = str(tmp_path / "cli.csv")
    proc = forked_ranks.python(["-m", "mcl_dist.commands.export_labels", path, out2], timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(out2) as f:
        assert f.read() == open(out).read()
    bad = forked_ranks.python(["-m", "mcl_dist.commands.export_labels", str(tmp_path / "no.npz"), out2], timeout=60)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_fingerprint_matches_shard_index(tmp_path):
    """Labels are checked against ShardIndex.fingerprint(): both must hash the same way."""
    from conftest import write_test_shards
    from mcl_dist.data.tar_index import build_or_load_index

    shards = write_test_shards(str(tmp_path / "shards"), n_shards=2, per_shard=5)
    index = build_or_load_index(shards, str(tmp_path / "idx"))
    assert index.fingerprint() == keys_fingerprint(shards, index.keys)
