"""Sequential webdataset streaming: bad samples are skipped and counted, embedding-mode streams
cover every sample exactly once, and a resumed training stream continues exactly."""
import os

import pytest
import torch
from torchvision import transforms

from mcl_dist.clustering.embedding import embed_shards
from mcl_dist.data.decode import decode_caption, decode_image
from mcl_dist.data.preflight import DataError
from mcl_dist.data.streaming import BadSampleMonitor, ShardStream, make_loader

from conftest import write_test_shards


def decode(raw):
    """Real image and caption decoding, without the model transform (kept small for speed)."""
    img = decode_image(raw, ("png", "jpg"))
    return {"image": torch.tensor(list(img.getpixel((16, 16))), dtype=torch.float32),
            "text": torch.tensor([len(decode_caption(raw, "txt"))]), "key": raw["__key__"]}


def collect(stream, workers=0):
    keys, bad, reasons, damaged, metas = [], 0, {}, {}, []
    for batch in make_loader(stream, workers):
        keys += batch["key"]
        meta = batch["meta"]
        bad += meta["bad"]
        for k, v in meta["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
        for k, v in meta["damaged_shards"].items():
            damaged[k] = damaged.get(k, 0) + v
        metas.append(meta)
    return keys, bad, reasons, damaged, metas


def test_corrupt_images_and_missing_captions_are_skipped_and_counted(tmp_path):
    urls = write_test_shards(str(tmp_path), n_shards=2, per_shard=10, corrupt=(3, 12), no_caption=(5,))
    keys, bad, reasons, _, _ = collect(ShardStream(urls, decode, batch_size=4, rank=0, world=1, seed=None,
                                                   infinite=False))
    assert len(keys) == 17 and bad == 3
    assert reasons == {"corrupt_image": 2, "missing_caption": 1}
    assert "s000003" not in keys and "s000005" not in keys and "s000012" not in keys


def test_truncated_tar_keeps_complete_samples_and_reports_the_shard(tmp_path):
    urls = write_test_shards(str(tmp_path), n_shards=2, per_shard=10)
    size = os.path.getsize(urls[1])
    with open(urls[1], "r+b") as f:
        f.truncate(size // 2)
    keys, bad, _, damaged, _ = collect(ShardStream(urls, decode, batch_size=4, rank=0, world=1, seed=None,
                                                   infinite=False))
    assert keys[:10] == [f"s{i:06d}" for i in range(10)]
    assert 10 < len(keys) < 20  # the samples before the cut survive
    assert any(urls[1] in k for k in damaged), damaged


def test_bad_sample_monitor_names_the_shard():
    mon = BadSampleMonitor(max_fraction=0.1, min_seen=10)
    mon.update({"bad": 5, "reasons": {"corrupt_image": 5}, "bad_shards": {"/d/x-3.tar": 5},
                "damaged_shards": {}}, n_good=15)
    msg = mon.check(mon.merge([mon.summary()]))
    assert "5 of 20 samples were unreadable" in msg and "/d/x-3.tar (5)" in msg
    assert "data.max_bad_fraction" in msg


class MeanColour(torch.nn.Module):
    """A stand-in image tower: the embedding pass without a real model."""

    output_dim = 3

    def encode_image(self, images):
        return images.mean(dim=(2, 3))


def test_embedding_stops_above_max_bad_fraction_naming_the_shard(tmp_path):
    # 30 of 220 samples corrupt (13.6%), all in the second shard
    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=110, corrupt=tuple(range(110, 140)))
    bundle = {"preprocess_val": transforms.ToTensor(), "tokenizer": None}
    kw = dict(mode="image", batch_size=64, workers=0, image_ext="png")
    out = tmp_path / "embed"
    with pytest.raises(DataError, match="data.max_bad_fraction") as e:
        embed_shards(MeanColour(), bundle, urls, str(out), max_bad_fraction=0.05, **kw)
    assert "30 of 220 samples were unreadable" in str(e.value) and f"{urls[1]} (30)" in str(e.value)
    assert not list(out.glob("part*"))  # stopped before writing: a re-run embeds (and counts) again
    stats = embed_shards(MeanColour(), bundle, urls, str(out), max_bad_fraction=0.2, **kw)
    assert stats["samples"] == 190 and stats["bad"] == 30


def test_embedding_nothing_readable_says_why_with_the_summed_reasons(tmp_path):
    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=20, corrupt=tuple(range(40)))
    bundle = {"preprocess_val": transforms.ToTensor(), "tokenizer": None}
    out = tmp_path / "embed"
    with pytest.raises(DataError, match=r"no sample could be embedded \(40 bad: corrupt_image 40\); check"):
        embed_shards(MeanColour(), bundle, urls, str(out), mode="image", batch_size=16, workers=0,
                     image_ext="png", max_bad_fraction=1.0)
    assert not (out / "embed_stats.json").exists()


def test_embedding_mode_covers_every_sample_once_across_ranks_and_workers(tmp_path):
    urls = write_test_shards(str(tmp_path), n_shards=5, per_shard=7)  # 5 shards: not divisible by 2
    seen = []
    for rank in range(2):
        mine = urls[rank::2]
        k, *_ = collect(ShardStream(mine, decode, batch_size=3, rank=0, world=1, seed=None, infinite=False),
                        workers=min(2, len(mine)))
        seen += k
    assert sorted(seen) == [f"s{i:06d}" for i in range(35)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_exactly(tmp_path, workers):
    urls = write_test_shards(str(tmp_path), n_shards=4, per_shard=9)
    kw = dict(batch_size=4, rank=1, world=2, seed=3, shuffle_buffer=8, infinite=True)
    full = []
    for i, batch in enumerate(make_loader(ShardStream(urls, decode, **kw), workers)):
        full.append(batch)
        if i == 11:
            break
    assert len({tuple(b["key"]) for b in full}) == len(full)
    cut = 5  # resume after 5 micro-batches, from the positions they carried
    positions = {}
    for b in full[:cut]:
        positions[b["meta"]["worker"]] = b["meta"]["raw_pos"]
    n = max(1, workers)
    resumed = ShardStream(urls, decode, start_positions=positions, rotate=cut % n, **kw)
    tail = []
    for i, batch in enumerate(make_loader(resumed, workers)):
        tail.append(batch)
        if len(tail) == len(full) - cut:
            break
    for a, b in zip(full[cut:], tail):
        assert a["key"] == b["key"]
        assert torch.equal(a["image"], b["image"])
