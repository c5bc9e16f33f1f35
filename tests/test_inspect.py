"""Cluster inspector: purity numbers on hand-made groups, and the PNG / tables it writes."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mcl_dist.clustering.cluster_inspect import inspect_stage, purity, stage_purity
from mcl_dist.clustering.pseudo_labels import save_labels
from mcl_dist.core.files import save_npz
from mcl_dist.data.tar_index import keys_fingerprint


def test_purity_hand_computed():
    groups = np.array([0, 0, 0, 0, 1, 1, -1])
    recs = [{"color": "red", "shape": "a"}, {"color": "red", "shape": "b"}, {"color": "red", "shape": "b"},
            {"color": "blue", "shape": "c"}, {"color": "blue", "shape": "a"}, {"color": "blue"},
            {"color": "green", "shape": "a"}]
    res = purity(groups, recs, ["color", "shape"])
    assert res["groups"][0]["size"] == 4 and res["groups"][1]["size"] == 2
    assert res["groups"][0]["color"] == {"majority": "red", "share": 0.75}
    assert res["groups"][0]["shape"] == {"majority": "b", "share": 0.5}
    assert res["groups"][1]["color"]["share"] == 1.0
    assert res["groups"][1]["shape"] == {"majority": "a", "share": 1.0}  # the record without shape is left out
    assert res["mean_purity"]["color"] == pytest.approx((3 + 2) / 6)  # the -1 sample is in no group
    assert res["mean_purity"]["shape"] == pytest.approx((2 + 1) / 5)
    assert res["chance"]["color"] == pytest.approx(3 / 7)


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def fake_run(tmp_path):
    """A run dir with one shard of 12 samples and stage-1 clusters split by colour only."""
    colors = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    shard = str(tmp_path / "data" / "train-00000.tar")
    os.makedirs(os.path.dirname(shard))
    keys, recs = [], []
    with wds.TarWriter(shard) as sink:
        for i in range(12):
            rec = {"color": ["red", "blue"][i % 2], "shape": ["circle", "square", "star"][i % 3]}
            key = f"k{i:03d}"
            sink.write({"__key__": key, "png": _png(colors[rec["color"]]), "txt": b"x", "json": json.dumps(rec).encode()})
            keys.append(key)
            recs.append(rec)
    run = tmp_path / "run"
    (run / "stage_1" / "kmeans").mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  train_shards: {shard}\n")
    clusters = np.array([i % 2 for i in range(12)], np.int32)  # cluster = colour
    # two rank parts, as the distributed k-means writes them
    save_npz(str(run / "stage_1" / "kmeans" / "assign0000-of0002.npz"), keys=np.array(keys[:5]), clusters=clusters[:5])
    save_npz(str(run / "stage_1" / "kmeans" / "assign0001-of0002.npz"), keys=np.array(keys[5:]), clusters=clusters[5:])
    labels = np.array([0] * 6 + [1] * 6)  # pseudo-labels: first half / second half
    save_labels(str(run / "stage_1" / "labels.npz"), np.array(keys, dtype=bytes), labels, clusters[None],
                keys_fingerprint([shard], keys))
    return str(run)


def test_inspect_stage_writes_grid_and_purity(fake_run, tmp_path):
    out = str(tmp_path / "out")
    res = inspect_stage(fake_run, 1, out, per_group=4)
    assert res["mean_purity"]["color"] == 1.0
    assert res["mean_purity"]["shape"] == pytest.approx(2 / 6)  # each cluster holds 2 of each of 3 shapes
    assert set(res["groups"]) == {0, 1} and all(e["size"] == 6 for e in res["groups"].values())
    with Image.open(os.path.join(out, "cluster_grid.png")) as im:
        assert im.size[1] >= 2 * 8  # two rows
        rgb = np.asarray(im.convert("RGB"))
    assert ((rgb == (255, 0, 0)).all(-1)).any() and ((rgb == (0, 0, 255)).all(-1)).any()
    table = open(os.path.join(out, "purity.md")).read()
    assert "red 1.00" in table and "blue 1.00" in table
    assert json.load(open(os.path.join(out, "purity.json")))["mean_purity"]["color"] == 1.0


def test_stage_purity_of_labels(fake_run):
    res = stage_purity(fake_run, 1, source="labels", attributes=["color"])
    assert res["mean_purity"]["color"] == pytest.approx(0.5)  # each half: 3 red, 3 blue
    assert res["groups"][0]["size"] == 6
