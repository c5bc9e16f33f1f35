"""Random-access tar index and the map-style dataset: agreement with webdataset, caching, damage."""
from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from mcl_dist.data import tar_index
from mcl_dist.data.sampler import PlannedBatchSampler
from mcl_dist.data.sources import IndexedDataset, PlannedSource, collate_skip_bad
from mcl_dist.data.tar_index import build_or_load_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value % 256, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: str, keys: list[str], tag: str = "") -> str:
    with wds.TarWriter(path) as sink:
        for j, key in enumerate(keys):
            sample = {"__key__": key, "png": _png(j), "txt": f"caption {tag}{key}", "json": '{"i": %d}' % j}
            if j % 3 == 0:
                sample["cls"] = str(j)
            sink.write(sample)
    return path


@pytest.fixture
def shards(tmp_path):
    return [write_shard(str(tmp_path / f"shard-{s}.tar"), [f"s{s}_{j:04d}" for j in range(12)]) for s in range(3)]


def sequential(paths: list[str], **kw) -> list[dict]:
    out = []
    for s in wds.WebDataset(paths, shardshuffle=False, **kw):
        s.pop("__local_path__", None)
        out.append(s)
    return out


def assert_same(index, paths):
    expected = sequential(paths)
    assert [k.decode() for k in index.keys] == [s["__key__"] for s in expected]
    for i, s in enumerate(expected):
        assert index.read_sample(i) == s


class CountScans:
    def __init__(self, monkeypatch):
        self.paths, self._scan = [], tar_index.scan_tar
        monkeypatch.setattr(tar_index, "scan_tar", self)

    def __call__(self, path):
        self.paths.append(path)
        return self._scan(path)


def test_index_matches_webdataset(shards, tmp_path):
    index = build_or_load_index(shards, str(tmp_path / "idx"), progress=False)
    assert len(index) == 36 and index.shards == shards and not index.damaged
    assert index.shard_of(13) == 1 and set(index.extensions) == {"cls", "json", "png", "txt"}
    assert_same(index, shards)
    assert index.key_to_index(["s2_0003", "nope", "s0_0000"]).tolist() == [27, -1, 0]
    assert index.key_to_index(np.array([b"s1_0011"])).tolist() == [23]
    again = build_or_load_index(shards, str(tmp_path / "idx"), progress=False)
    assert again.fingerprint() == index.fingerprint()
    assert build_or_load_index(shards[::-1], str(tmp_path / "idx"), progress=False).fingerprint() != index.fingerprint()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
def test_tar_formats_long_names_and_dirs(tmp_path, fmt):
    """Header parsing: GNU long names, ustar prefixes, pax paths, directories, upper-case exts."""
    path = str(tmp_path / "f.tar")
    deep = "d" * 60 + "/" + "e" * 60  # > 100 chars: ustar prefix, GNU 'L' or pax path
    names = [f"{deep}/a.PNG", f"{deep}/a.txt", "dir/", "b.seg.png", "b.txt", "__meta__", "noext", "c.txt"]
    with tarfile.open(path, "w", format=fmt) as tar:
        for j, name in enumerate(names):
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            data = f"data {j}".encode() * (j * 50 + 1)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = build_or_load_index([path], str(tmp_path / "idx"), progress=False)
    assert [k.decode() for k in index.keys] == [f"{deep}/a", "b", "c"]
    assert set(index.read_sample(1)) == {"__key__", "__url__", "seg.png", "txt"}
    assert_same(index, [path])


def test_cache_reuse_stale_and_foreign(shards, tmp_path, monkeypatch, caplog):
    cache = str(tmp_path / "idx")
    build_or_load_index(shards, cache, progress=False)
    scans = CountScans(monkeypatch)
    build_or_load_index(shards, cache, progress=False)
    assert scans.paths == []  # everything came from the cache

    write_shard(shards[1], [f"new_{j}" for j in range(5)], tag="x")  # same path, other content
    os.utime(shards[1], ns=(1, 1))  # a different mtime for sure, whatever the clock resolution
    with caplog.at_level(logging.WARNING):
        index = build_or_load_index(shards, cache, progress=False)
    assert scans.paths == [os.path.abspath(shards[1])]
    assert "changed since it was indexed" in caplog.text and shards[1] in caplog.text
    assert len(index) == 29 and index.read_sample(12)["txt"] == b"caption xnew_0"
    assert_same(index, shards)

    # a cache file copied under another shard's name is foreign: rebuilt, never mixed in
    files = {f.split(".")[0]: os.path.join(cache, f) for f in os.listdir(cache)}
    shutil.copy(files["shard-0"], files["shard-2"])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        index = build_or_load_index(shards, cache, progress=False)
    assert scans.paths[-1] == os.path.abspath(shards[2]) and "belongs to another shard" in caplog.text
    assert_same(index, shards)

    build_or_load_index(shards, cache, progress=False, rebuild=True)
    assert len(scans.paths) == 2 + 3


def test_killed_build_resumes(shards, tmp_path, monkeypatch):
    cache = str(tmp_path / "idx")
    scans = CountScans(monkeypatch)
    real = scans._scan

    def die_on_third(path):
        if path.endswith("shard-2.tar"):
            raise KeyboardInterrupt
        return real(path)

    scans._scan = die_on_third
    with pytest.raises(KeyboardInterrupt):
        build_or_load_index(shards, cache, progress=False)
    scans._scan, scans.paths = real, []
    assert_same(build_or_load_index(shards, cache, progress=False), shards)
    assert scans.paths == [os.path.abspath(shards[2])]  # the first two were kept


@pytest.mark.parametrize("damage", ["cut", "corrupt_header"])
def test_damaged_tar(shards, tmp_path, caplog, damage):
    complete = sequential([shards[1]])[:5]
    scan = tar_index.scan_tar(shards[1])
    at = int(scan["member_offset"][scan["member_start"][5]])  # data of the 6th sample's first member
    with open(shards[1], "r+b") as f:
        if damage == "cut":
            f.truncate(at + 30)
        else:  # garbage over that member's header
            f.seek(at - 512)
            f.write(b"garbage" * 20)
    with caplog.at_level(logging.WARNING):
        index = build_or_load_index(shards, str(tmp_path / "idx"), progress=False)
    assert shards[1] in caplog.text and "members lost" in caplog.text
    assert list(index.damaged) == [shards[1]]
    lost = index.damaged[shards[1]][1]
    assert (lost >= 1) if damage == "cut" else (15 <= lost <= 30)  # 7 samples x 3-4 members
    got = [index.read_sample(i) for i in range(len(index)) if index.shard_of(i) == 1]
    assert len(got) in (4, 5) and got == complete[:len(got)]  # the sample in progress may be dropped
    assert len(index) == 24 + len(got)


def test_duplicate_keys_and_remote_urls(tmp_path, shards):
    dup = write_shard(str(tmp_path / "other.tar"), ["z0", "s1_0004"])
    with pytest.raises(ValueError, match=r"s1_0004.*shard-1\.tar.*other\.tar"):
        build_or_load_index(shards + [dup], str(tmp_path / "idx"), progress=False)
    url = "https://example.com/cc12m/00000.tar"
    with pytest.raises(ValueError, match=r"example\.com.*local or mounted filesystem") as e:
        build_or_load_index([shards[0], url], str(tmp_path / "idx"), progress=False)
    assert "copy" in str(e.value) and "mount" in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        build_or_load_index([str(tmp_path / "missing.tar")], str(tmp_path / "idx"), progress=False)


def decode_value(raw: dict) -> int:
    if raw["__key__"].endswith("7"):
        raise ValueError("pretend this image is corrupt")
    return int(np.asarray(Image.open(io.BytesIO(raw["png"])))[0, 0, 0]) * 1000 + len(raw["txt"])


def test_indexed_dataset_with_workers(shards, tmp_path):
    index = build_or_load_index(shards, str(tmp_path / "idx"), progress=False)
    ds = IndexedDataset(index, decode_value)
    assert ds[5] == (5 * 1000 + len("caption s0_0005"), 5, -1, -1)  # parent opens handles before fork
    items = [(i, i % 4, i // 4) for i in range(len(index) - 1, -1, -2)]
    loader = DataLoader(ds, batch_size=4, num_workers=2, sampler=items,
                        collate_fn=functools.partial(collate_skip_bad, inner_collate=list))
    seen, n_bad = [], 0
    for batch, bad in loader:
        n_bad += bad
        seen += batch or []
    expected = [i for i, _, _ in items if not index.keys[i].endswith(b"7")]
    assert n_bad == len(items) - len(expected) > 0
    assert [s[1] for s in seen] == expected
    for value, i, label, group in seen:
        raw = index.read_sample(i)
        assert (label, group) == (i % 4, i // 4) and value == decode_value(raw)
    assert collate_skip_bad([(None, 0, 0, 0)]) == (None, 1)


def noisy_decode(raw: dict) -> dict:
    """An 'augmentation' that draws from torch's CPU generator, which SeededDecode seeds; the key
    says which worker process decoded it."""
    return {"image": torch.rand(2), "key": f"{raw['__key__']}@{os.getpid()}"}


def test_planned_source_runs_on_across_epochs_and_resumes_exactly(shards, tmp_path):
    """One DataLoader for the whole stage (workers live across epochs): the batches are each
    epoch's plan in order, the state follows them, and a resume from any state continues with
    the same samples and the same seeded draws."""
    index = build_or_load_index(shards, str(tmp_path / "idx"), progress=False)
    labels = np.arange(len(index)) % 3
    make = lambda: PlannedSource(index, labels, noisy_decode, micro_batch=4, accum=2, world=1, rank=0,
                                 group_size=4, seed=7, workers=2)
    source = make()
    steps = source.plan(0).num_steps
    it, seen, pids = iter(source.batches()), [], set()
    for _ in range(2 * (2 * steps + 1)):  # two epochs and one step: across two epoch boundaries
        batch = next(it)
        pids |= {k.split("@")[1] for k in batch["key"]}
        batch["key"] = [k.split("@")[0] for k in batch["key"]]
        seen.append((batch["epoch"], batch["key"], batch["image"], dict(source.state())))
    assert len(pids) == 2  # the same two workers for all three epochs (a loader per epoch: 6)
    expected = [(e, [index.keys[i].decode() for i, _, _ in mb]) for e in range(3)
                for mb in PlannedBatchSampler(source.plan(e), rank=0)][: len(seen)]
    assert [(e, k) for e, k, _, _ in seen] == expected
    assert [st for *_, st in seen[2 * steps - 2: 2 * steps + 2]] == [
        {"epoch": 0, "step": steps - 1}, {"epoch": 0, "step": steps}, {"epoch": 1, "step": 0}, {"epoch": 1, "step": 1}]
    draws = {(e, k): img for e, keys, images, _ in seen for k, img in zip(keys, images)}
    both = [k for e, k in draws if e == 0 and (1, k) in draws]
    assert both and all(not torch.equal(draws[0, k], draws[1, k]) for k in both)  # seeded per epoch
    for at in (2 * steps - 1, 2 * steps + 1):  # resume at an epoch's end, and one step into the next
        again = iter(make().batches(seen[at][3]))
        for e, keys, image, _ in seen[at + 1:]:
            batch = next(again)
            assert (batch["epoch"], [k.split("@")[0] for k in batch["key"]]) == (e, keys)
            assert torch.equal(batch["image"], image)


def test_build_index_cli(shards, tmp_path, capsys):
    from mcl_dist.commands import build_index as cli
    pattern = os.path.join(os.path.dirname(shards[0]), "shard-{0..2}.tar")
    assert cli.main(["--shards", pattern, "--cache-dir", str(tmp_path / "idx"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "shards: 3" in out and "samples: 36" in out and "damaged shards: 0" in out
    assert cli.main(["--shards", "s3://bucket/{0..1}.tar", "--cache-dir", str(tmp_path / "idx")]) == 2
    assert "local or mounted" in capsys.readouterr().err
