"""The JPEG shard writer: img2dataset's layout, decodable photo-sized JPEGs, deterministic."""
import io
import json
import os
import tarfile

from PIL import Image

from mcl_dist.bench.jpeg_shards import pattern, write_jpeg_shards
from mcl_dist.data.shards import expand_urls


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_layout_sizes_and_decoding(tmp_path):
    paths = write_jpeg_shards(str(tmp_path), n_samples=12, short_side=256, samples_per_shard=5, seed=3)
    assert [os.path.basename(p) for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert expand_urls(pattern(paths)) == paths
    sizes = []
    for s, path in enumerate(paths):
        members = _members(path)
        keys = sorted({name.split(".")[0] for name in members})
        n = 5 if s < 2 else 2
        assert keys == [f"{s * 10_000 + i:09d}" for i in range(n)]
        assert set(members) == {f"{k}.{ext}" for k in keys for ext in ("jpg", "txt", "json")}
        stats = json.load(open(path.replace(".tar", "_stats.json")))
        assert stats["successes"] == stats["count"] == n
        for k in keys:
            img = Image.open(io.BytesIO(members[f"{k}.jpg"]))
            img.load()
            assert img.format == "JPEG" and min(img.size) == 256 and max(img.size) <= 384
            meta = json.loads(members[f"{k}.json"])
            assert meta["key"] == k and meta["caption"] == members[f"{k}.txt"].decode() != ""
            assert (meta["width"], meta["height"]) == img.size
            sizes.append(len(members[f"{k}.jpg"]))
    assert 12_000 <= min(sizes) and max(sizes) <= 60_000  # photo-like: ~15-40 KB at 256 px


def test_512_and_determinism(tmp_path):
    a = write_jpeg_shards(str(tmp_path / "a"), n_samples=3, short_side=512, samples_per_shard=3, seed=1)
    b = write_jpeg_shards(str(tmp_path / "b"), n_samples=3, short_side=512, samples_per_shard=3, seed=1)
    ma, mb = _members(a[0]), _members(b[0])
    assert ma == mb
    jpgs = [v for k, v in ma.items() if k.endswith(".jpg")]
    assert all(30_000 <= len(j) <= 120_000 for j in jpgs)
    assert all(min(Image.open(io.BytesIO(j)).size) == 512 for j in jpgs)
