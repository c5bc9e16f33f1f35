"""The label-free stopping signal (mcl_dist.clustering.stop_signal) on constructed labelings, and in a real run."""

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from mcl_dist.clustering.pseudo_labels import compose_labels
from mcl_dist.clustering.stop_signal import normalized_mutual_info, split_signal


def test_nmi_equals_scikit_learn():
    rng = np.random.default_rng(0)
    for k_a, k_b in ((8, 5), (3, 30), (50, 2)):
        a, b = rng.integers(0, k_a, 3000), rng.integers(0, k_b, 3000)
        assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
        mixed = np.where(rng.random(3000) < 0.7, a % k_b, b)  # partly dependent
        assert normalized_mutual_info(a, mixed) == pytest.approx(normalized_mutual_info_score(a, mixed), abs=1e-12)
    assert normalized_mutual_info(np.zeros(10), np.zeros(10)) == 1.0
    assert normalized_mutual_info(np.zeros(10), np.arange(10)) == 0.0


def test_clusters_that_cut_across_every_label_say_go_on():
    labels = np.repeat(np.arange(4), 40)  # 4 labels of 40
    clusters = np.tile(np.repeat([0, 1], 20), 4)  # a new feature: two halves inside every label
    sig = split_signal(labels, clusters, min_label_size=4)
    assert sig["split_labels"] == 1.0 and sig["split_samples"] == 1.0
    assert sig["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert (sig["labels_before"], sig["labels_after"]) == (4, 8)
    assert sig["labels_after"] == len(np.unique(compose_labels([labels, clusters], 4)))


def test_clusters_that_redraw_the_labels_say_stop():
    labels = np.repeat(np.arange(4), 40)
    clusters = (labels * 7 + 3) % 4  # the same partition under other names
    sig = split_signal(labels, clusters, min_label_size=4)
    assert sig["nmi"] == pytest.approx(1.0)
    assert sig["split_labels"] == 0.0 and sig["split_samples"] == 0.0
    assert sig["labels_after"] == sig["labels_before"] == 4


def test_small_pieces_do_not_count_as_a_split_and_missing_samples_are_ignored():
    labels = np.repeat(np.arange(2), 40)
    clusters = np.zeros(80, np.int64)
    clusters[:3] = 1  # label 0: 37 + 3 (3 < min_label_size: falls back to the parent)
    clusters[40:60] = 2  # label 1: 20 + 20: a real split
    labels_m, clusters_m = np.append(labels, [-1, 0]), np.append(clusters, [1, -1])
    sig = split_signal(labels_m, clusters_m, min_label_size=4)
    assert sig["split_labels"] == 0.5 and sig["split_samples"] == 0.5
    assert sig["labels_after"] == len(np.unique(compose_labels([labels, clusters], 4))) == 4
    # combinations (0,0) 37, (0,1) 3, (1,0) 20, (1,2) 20: three of four keep their own label
    assert sig["survived_labels"] == 0.75 and sig["survived_samples"] == 77 / 80


def test_survived_share_falls_when_the_new_clusters_shatter_the_labels():
    labels = np.repeat(np.arange(4), 12)
    assert split_signal(labels, np.tile([0, 1], 24), 4)["survived_samples"] == 1.0  # 8 pieces of 6
    shattered = split_signal(labels, np.arange(48) % 6, 4)  # 24 pieces of 2 < min_label_size
    assert shattered["survived_labels"] == 0.0 and shattered["survived_samples"] == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="3 labels vs 2 cluster ids"):
        split_signal(np.zeros(3), np.zeros(2), 4)
