"""Linear CKA between stages' features (mcl_dist/integration/stage_similarity.py): its invariances, the
per-stage signal against the earlier stages, and the rows read from the embed steps' files."""
import os

import numpy as np
import pytest

from mcl_dist.integration.stage_similarity import cka_to_earlier, embedded_features, linear_cka


def rand(n=300, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_cka_is_one_for_rotated_scaled_copies_and_small_for_unrelated_features():
    x = rand()
    q, _ = np.linalg.qr(rand(16, 16, seed=1))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)
    assert linear_cka(x, rand(seed=2)) < 0.1
    half = np.concatenate([x[:, :8], rand(300, 8, seed=3)], 1)  # shares half its directions
    assert 0.3 < linear_cka(x, half) < 0.8
    with pytest.raises(ValueError, match="same N"):
        linear_cka(x, x[:10])


def test_cka_to_earlier_flags_the_stage_that_repeats_an_earlier_one():
    s0, new = rand(seed=0), rand(seed=5)
    cka = cka_to_earlier([s0, 2 * s0, new])  # stage 1 repeats stage 0; stage 2 is new
    assert cka[0] is None and cka[1] == pytest.approx(1.0) and cka[2] < 0.1


def test_embedded_features_aligns_rows_by_key(tmp_path):
    keys = np.array([f"k{i:03d}" for i in range(50)])
    feats = rand(50, 4, seed=7).astype(np.float16)
    for s, order in ((1, np.arange(50)), (2, np.random.default_rng(0).permutation(50))):
        d = tmp_path / f"stage_{s}" / "embed"
        os.makedirs(d)
        np.save(d / "part0000-of0001.keys.npy", keys[order])
        np.save(d / "part0000-of0001.feats.npy", feats[order] * s)
    a, b = embedded_features([str(tmp_path / "stage_1" / "embed"), str(tmp_path / "stage_2" / "embed")], max_rows=20)
    assert a.shape == b.shape == (20, 4)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-3)  # same samples, row for row
