"""The second synthetic family (glyphs): determinism, attribute counts, captions, MMVP pairs that
differ only in the named attribute, the same shard / eval layout as the shapes family."""
import hashlib
import json
import math
import os

import numpy as np
import webdataset as wds

from mcl_dist.eval.mmvp import read_pairs
from mcl_dist.synthetic.trifeature import (SyntheticSpec, easy_combinations, write_mmvp_pairs, write_synthetic_shards,
                                write_zero_shot_sets)
from mcl_dist.synthetic.glyphs import GlyphSpec


def digests(paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def test_seeded_shards_are_byte_identical_and_differ_from_the_shapes_family(tmp_path):
    kw = dict(n_samples=24, samples_per_shard=10, spec=GlyphSpec(), progress=False)
    a = write_synthetic_shards(str(tmp_path / "a"), seed=2, **kw)
    b = write_synthetic_shards(str(tmp_path / "b"), seed=2, **kw)
    c = write_synthetic_shards(str(tmp_path / "c"), seed=3, **kw)
    assert len(a) == 3 and digests(a) == digests(b)
    assert all(x != y for x, y in zip(digests(a), digests(c)))
    shapes = write_synthetic_shards(str(tmp_path / "a"), seed=2, n_samples=24, samples_per_shard=10, progress=False)
    assert digests(shapes) != digests(b)  # same folder, other family: rewritten, never mixed
    man = json.load(open(os.path.join(tmp_path / "b", "train.manifest.json")))
    assert man["params"]["spec"]["family"] == "glyphs"


def test_attribute_counts_and_easy_combinations():
    spec = GlyphSpec()
    counts = {a: len(spec.vocab(a)) for a in spec.attributes}
    assert counts == {"letter": 10, "ink": 8, "position": 6, "backdrop": 6, "band": 5}
    assert easy_combinations(spec) == 8 * 6 * 5
    assert math.prod(counts[a] for a in spec.easy + ("position",)) == 1440 >= 1000  # > any K swept (16-64)
    recs = spec.sample(np.random.default_rng(0), 20000)
    for a in spec.attributes:
        ids = np.bincount([r[a + "_id"] for r in recs], minlength=counts[a])
        assert ids.min() > 0.85 * 20000 / counts[a]  # uniform
        assert all(spec.vocab(a)[r[a + "_id"]] == r[a] for r in recs[:200])
    held = GlyphSpec(no_easy=True).sample(np.random.default_rng(1), 300)
    assert all(len({r[a] for r in held}) == 1 for a in spec.easy)
    assert all(len({r[a] for r in held}) == counts[a] for a in spec.hard)


def test_samples_are_complete_and_captions_name_every_value(tmp_path):
    spec = GlyphSpec()
    paths = write_synthetic_shards(str(tmp_path), n_samples=30, samples_per_shard=30, seed=0, spec=spec,
                                   prefix="test", progress=False)
    samples = list(wds.WebDataset(paths, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == 30
    for s in samples:
        rec, text = s["json"], s["txt"]
        assert s["png"].size == (32, 32)
        assert all(rec[a] in text for a in spec.attributes), text
    assert len({s["txt"] for s in samples}) == 30


def test_letter_changes_only_letter_pixels():
    spec = GlyphSpec(noise_std=0.0)
    a = spec.sample(np.random.default_rng(0), 1)[0]
    b = dict(a, letter="H" if a["letter"] != "H" else "E")
    x = np.asarray(spec.render(a, np.random.default_rng(5)), np.int16)
    y = np.asarray(spec.render(b, np.random.default_rng(5)), np.int16)
    changed = np.abs(x - y).max(-1) > 0
    assert 0 < changed.sum() < 0.25 * 32 * 32 and not changed[:spec.band_width].any()
    r, c = np.nonzero(changed)  # all inside one cell of the 2 x 3 grid
    assert r.max() - r.min() < 16 and c.max() - c.min() < 12


def test_mmvp_pairs_differ_only_in_the_named_attribute(tmp_path):
    spec = GlyphSpec()
    out = write_mmvp_pairs(str(tmp_path / "mmvp"), spec=spec, n_pairs_per_attribute=4, seed=0)
    records = json.load(open(os.path.join(out, "attributes.json")))
    pairs = read_pairs(out)
    assert len(pairs) == 4 * len(spec.attributes)
    for p in pairs:
        attr, (q1, q2) = p["category"], p["qids"]
        r1, r2 = records[str(q1)], records[str(q2)]
        assert {k for k in r1 if r1[k] != r2[k]} == {attr, attr + "_id"}
        s1, s2 = p["statements"]
        norm = lambda t: (" " + t + " ").replace(" an ", " a ")  # noqa: E731  the article follows the value
        assert s1 != s2 and norm(s1).replace(f" {r1[attr]} ", f" {r2[attr]} ") == norm(s2)
    zs = json.load(open(write_zero_shot_sets(str(tmp_path / "zs.json"), spec)))
    assert set(zs) == set(spec.attributes) and zs["letter"]["classnames"] == list(spec.letters)
    assert "{}" in zs["letter"]["templates"][0]


def test_shapes_family_manifest_unchanged_by_the_family_interface():
    """The shapes family's recorded spec has no 'family' key, so its existing data stays valid."""
    from mcl_dist.synthetic.trifeature import _spec_dict
    assert "family" not in _spec_dict(SyntheticSpec())
