"""Synthetic multi-attribute data: determinism, sample contents, MMVP pairs, no-easy, resume."""
import csv
import hashlib
import itertools
import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mcl_dist.synthetic.trifeature import (SyntheticSpec, caption, easy_combinations, ensure_demo_data, render,
                                sample_attributes, statement, write_mmvp_pairs, write_synthetic_shards)


def digests(paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def read_samples(paths):
    return list(wds.WebDataset(paths, shardshuffle=False, empty_check=False))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(n_samples=40, samples_per_shard=16, progress=False)
    a = write_synthetic_shards(str(tmp_path / "a"), seed=3, **kw)
    b = write_synthetic_shards(str(tmp_path / "b"), seed=3, **kw)
    c = write_synthetic_shards(str(tmp_path / "c"), seed=4, **kw)
    assert len(a) == 3 and [os.path.basename(p) for p in a] == ["train-00000.tar", "train-00001.tar", "train-00002.tar"]
    assert digests(a) == digests(b)
    assert all(x != y for x, y in zip(digests(a), digests(c)))


def test_every_sample_complete_and_captions_name_every_value(tmp_path):
    spec = SyntheticSpec()
    paths = write_synthetic_shards(str(tmp_path), n_samples=50, samples_per_shard=20, seed=0, prefix="test",
                                   progress=False)
    samples = read_samples(paths)
    assert len(samples) == 50
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 50 and keys[0] == "test0_00000000" and keys[-1] == "test0_00000049"
    for s in samples:
        assert {"png", "txt", "json"} <= set(s)
        img = Image.open(__import__("io").BytesIO(s["png"]))
        assert img.size == (32, 32) and img.mode == "RGB"
        rec, text = json.loads(s["json"]), s["txt"].decode()
        for a in spec.attributes:
            assert spec.vocab(a)[rec[a + "_id"]] == rec[a]
            assert rec[a] in text, (a, rec[a], text)
    assert len({s["txt"] for s in samples}) == 50  # varied templates, not one fixed sentence


def test_caption_templates_vary_but_always_name_everything():
    spec = SyntheticSpec(attributes=SyntheticSpec().attributes + ("count",))
    rng = np.random.default_rng(0)
    attrs = sample_attributes(spec, rng, 1)[0]
    texts = {caption(spec, attrs, rng) for _ in range(200)}
    assert len(texts) > 20
    for t in texts:
        assert all(attrs[a] in t for a in spec.attributes), t


def test_attributes_independent_and_uniform():
    spec = SyntheticSpec()
    recs = sample_attributes(spec, np.random.default_rng(0), 20000)
    for a, b in itertools.combinations(spec.attributes, 2):  # every pair of values co-occurs
        seen = {(r[a], r[b]) for r in recs}
        assert len(seen) == len(spec.vocab(a)) * len(spec.vocab(b)), (a, b)
    assert easy_combinations(spec) == 1200  # docs/design.md section 7: ~1,150 suppressed, ~200 did not
    assert len({tuple(r[a] for a in spec.easy) for r in recs}) == 1200
    for a in spec.attributes:
        counts = np.bincount([r[a + "_id"] for r in recs])
        assert counts.min() > 0.85 * 20000 / len(spec.vocab(a))


def test_no_easy_holds_easy_attributes_constant(tmp_path):
    spec = SyntheticSpec(no_easy=True)
    assert easy_combinations(spec) == 1
    recs = sample_attributes(spec, np.random.default_rng(1), 500)
    for a in spec.easy:
        assert {r[a] for r in recs} == {spec.vocab(a)[0]}
    for a in spec.hard:
        assert len({r[a] for r in recs}) == len(spec.vocab(a))
    mmvp = write_mmvp_pairs(str(tmp_path / "mmvp"), spec=spec, n_pairs_per_attribute=2, seed=0)
    cats = {row["Type"] for row in csv.DictReader(open(os.path.join(mmvp, "Questions.csv")))}
    assert cats == set(spec.hard)  # an attribute held constant cannot form a pair


def test_mmvp_pairs_differ_in_exactly_the_named_attribute(tmp_path):
    from mcl_dist.eval.mmvp import read_pairs

    spec = SyntheticSpec(attributes=SyntheticSpec().attributes + ("count",))
    out = write_mmvp_pairs(str(tmp_path / "mmvp"), spec=spec, n_pairs_per_attribute=3, seed=0)
    with open(os.path.join(out, "Questions.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Question ID", "Type", "Statement"]  # the released header
    records = json.load(open(os.path.join(out, "attributes.json")))
    pairs = read_pairs(out)  # our evaluator parses it, with the release's image layout
    assert len(pairs) == 3 * len(spec.attributes) == (len(rows) - 1) // 2
    for p in pairs:
        attr, (q1, q2) = p["category"], p["qids"]
        assert q1 % 2 == 1 and q2 == q1 + 1
        assert all(os.path.dirname(i) == os.path.join(out, "MLLM_VLM Images", attr) for i in p["images"])
        r1, r2 = records[str(q1)], records[str(q2)]
        assert {k for k in r1 if r1[k] != r2[k]} == {attr, attr + "_id"}
        a1 = np.asarray(Image.open(p["images"][0]), np.int16)
        a2 = np.asarray(Image.open(p["images"][1]), np.int16)
        assert np.abs(a1 - a2).max() > 60  # the attribute is visible
        s1, s2 = p["statements"]
        assert s1 == statement(spec, r1, attr) and s2 == statement(spec, r2, attr) and s1 != s2
        if attr != "count":  # count also changes the noun's number ("triangle" -> "triangles")
            def norm(t):  # "an olive" -> "a black": the article follows the value
                return (" " + t + " ").replace(" an ", " a ")
            assert norm(s1).replace(r1[attr], r2[attr]) == norm(s2)


def test_pair_images_identical_outside_the_changed_attribute():
    """Same render seed, different background: only background pixels change."""
    spec = SyntheticSpec(noise_std=0.0)
    a = sample_attributes(spec, np.random.default_rng(0), 1)[0]
    b = dict(a, background="teal" if a["background"] != "teal" else "black")
    x = np.asarray(render(spec, a, np.random.default_rng(7)), np.int16)
    y = np.asarray(render(spec, b, np.random.default_rng(7)), np.int16)
    changed = np.abs(x - y).max(-1) > 0
    assert 0 < changed.sum() < 32 * 32 - 16 * 16  # background changed; frame (and most of the object) did not
    assert not changed[0].any() and not changed[:, 0].any()  # the frame ring is untouched


def test_rerun_keeps_complete_shards_and_redoes_missing_ones(tmp_path):
    kw = dict(n_samples=48, samples_per_shard=16, seed=0, progress=False)
    paths = write_synthetic_shards(str(tmp_path), **kw)
    before = digests(paths)
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    os.remove(paths[1])  # as if a run died before shard 1 was renamed into place
    man = os.path.join(str(tmp_path), "train.manifest.json")
    m = json.load(open(man))
    m["complete"] = False
    json.dump(m, open(man, "w"))
    assert write_synthetic_shards(str(tmp_path), **kw) == paths
    assert digests(paths) == before
    assert os.stat(paths[0]).st_mtime_ns == stamps[0] and os.stat(paths[2]).st_mtime_ns == stamps[2]
    assert json.load(open(man))["complete"] is True
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_other_parameters_rewrite_and_drop_stale_shards(tmp_path):
    old = write_synthetic_shards(str(tmp_path), n_samples=48, samples_per_shard=16, seed=0, progress=False)
    new = write_synthetic_shards(str(tmp_path), n_samples=20, samples_per_shard=16, seed=1, progress=False)
    assert len(new) == 2 and not os.path.exists(old[2])
    keys = [s["__key__"] for s in read_samples(new)]
    assert len(keys) == 20 and all(k.startswith("train1_") for k in keys)


def test_ensure_demo_data_idempotent(tmp_path):
    from mcl_dist.data.shards import expand_urls

    root = str(tmp_path / "demo")
    paths = ensure_demo_data(root, n_train=64, n_test=32, samples_per_shard=32, mmvp_pairs=2, progress=False)
    assert len(expand_urls(paths["train"])) == 2 and len(expand_urls(paths["test"])) == 1
    stamp = os.stat(os.path.join(paths["mmvp"], "Questions.csv")).st_mtime_ns
    shard_stamp = os.stat(expand_urls(paths["train"])[0]).st_mtime_ns
    zs_stamp = os.stat(paths["zero_shot"]).st_mtime_ns
    assert ensure_demo_data(root, n_train=64, n_test=32, samples_per_shard=32, mmvp_pairs=2, progress=False) == paths
    assert os.stat(os.path.join(paths["mmvp"], "Questions.csv")).st_mtime_ns == stamp
    assert os.stat(expand_urls(paths["train"])[0]).st_mtime_ns == shard_stamp
    assert os.stat(paths["zero_shot"]).st_mtime_ns == zs_stamp
    zs = json.load(open(paths["zero_shot"]))
    assert set(zs) == set(paths["label_fields"]) and zs["shape"]["classnames"] == list(SyntheticSpec().shapes)
    test_keys = {s["__key__"] for s in read_samples(expand_urls(paths["test"]))}
    train_keys = {s["__key__"] for s in read_samples(expand_urls(paths["train"]))}
    assert not test_keys & train_keys


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown"):
        SyntheticSpec(shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="disjoint"):
        SyntheticSpec(easy=("color", "shape"))
    with pytest.raises(ValueError, match="different colour words"):
        SyntheticSpec(backgrounds=("red", "black"))
    assert SyntheticSpec(shapes=["circle", "square"]).shapes == ("circle", "square")  # lists from YAML


def test_cli(tmp_path, capsys):
    from mcl_dist.commands.make_synthetic import main

    out = str(tmp_path / "d")
    assert main(["--out", out, "--train", "20", "--test", "10", "--samples-per-shard", "10", "--no-easy",
                 "--mmvp-pairs", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"data.train_shards: {out}/train-{{00000..00001}}.tar" in text and "(1 combinations)" in text
