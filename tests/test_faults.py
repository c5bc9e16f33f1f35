"""Fault matrix (docs/reliability.md): every bad input gives one clear outcome (kill points: test_kill_points.py).

Bad inputs that are refused before training run the real pipeline in this process (world size 1,
no torchrun: the same code path, much faster); the hang case runs under a real 2-rank torchrun,
bounded by a subprocess timeout (tests/launch_helpers.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tarfile

import numpy as np
import pytest
import torch

from conftest import png_bytes, tiny_config, write_test_shards
from launch_helpers import error_lines, launch_here, run2
from mcl_dist.data import tar_index
from mcl_dist.data.decode import BadSample, decode_image
from mcl_dist.data.preflight import DataError, check_index
from mcl_dist.data.tar_index import build_or_load_index
from mcl_dist.run import guards


def check(index, **kw) -> dict:
    args = dict(image_exts="png", caption_ext="txt", need_caption=True, max_member_bytes=0, max_bad_fraction=0.05)
    return check_index(index, **{**args, **kw})


# -- bad inputs refused (or counted) before training -----------------------------------------
def test_truncated_tar_counts_every_lost_sample_and_trips_the_threshold(tmp_path):
    urls = write_test_shards(str(tmp_path / "d"), n_shards=4, per_shard=32)
    scan = tar_index.scan_tar(urls[1])
    cut = int(scan["member_offset"][scan["member_start"][10]]) + 5  # inside sample 10's first member
    with open(urls[1], "r+b") as f:
        f.truncate(cut)
    index = build_or_load_index(urls, str(tmp_path / "idx"), progress=False)
    # samples 0..8 are provably complete; sample 9 may have had more members, 10..31 are gone
    assert len(index) == 3 * 32 + 9
    with pytest.raises(DataError) as e:
        check(index)
    assert str(e.value) == (f"23 of 128 samples are unusable before training starts (18.0% > "
                            f"data.max_bad_fraction=5.0%): lost_in_damaged_tar 23; worst shards: {urls[1]} (23)")
    stats = check(index, max_bad_fraction=0.5)  # under a looser threshold: counted, not refused
    assert stats["reasons"] == {"lost_in_damaged_tar": 23} and stats["samples"] == 128


def test_empty_and_image_only_shards_name_the_reason(tmp_path):
    image_only = write_test_shards(str(tmp_path / "a"), n_shards=2, per_shard=16, no_caption=tuple(range(32)))
    empty = str(tmp_path / "a" / "empty.tar")
    tarfile.open(empty, "w").close()
    index = build_or_load_index(image_only + [empty], str(tmp_path / "idx"), progress=False)
    with pytest.raises(DataError) as e:
        check(index)
    assert str(e.value).startswith("no readable sample in 3 shards (missing_caption 32); check data.image_ext "
                                   "('png') and data.caption_ext ('txt')")
    index = build_or_load_index([empty], str(tmp_path / "idx"), progress=False)
    with pytest.raises(DataError, match=r"^no readable sample in 1 shards \(the shards are empty\)"):
        check(index)


def test_oversized_members_and_images_are_bad_samples(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(0, 255, (k, k, 3), dtype=np.uint8)) for k in range(8, 16)]  # growing
    path = str(tmp_path / "sizes.tar")
    with wds.TarWriter(path) as sink:
        for i, img in enumerate(images):
            sink.write({"__key__": f"k{i}", "png": img, "txt": "noise"})
    index = build_or_load_index([path], str(tmp_path / "idx"), progress=False)
    stats = check(index, max_member_bytes=len(images[5]), max_bad_fraction=1.0)
    assert stats["reasons"] == {"too_large": 2} and stats["usable"] == 6  # the two largest images
    raw = {"__key__": "k", "png": png_bytes(np.zeros((40, 50, 3), np.uint8))}
    assert decode_image(raw, ("png",), max_pixels=2000).size == (50, 40)
    with pytest.raises(BadSample, match="50x40 pixels > data.max_image_pixels=1999") as e:
        decode_image(raw, ("png",), max_pixels=1999)
    assert e.value.reason == "too_large"
    with pytest.raises(BadSample, match="data.max_member_bytes=10"):
        decode_image(raw, ("png",), max_bytes=10)


def test_non_utf8_member_name_is_refused_up_front(tmp_path):
    urls = write_test_shards(str(tmp_path / "d"), n_shards=1, per_shard=8)
    bad = str(tmp_path / "d" / "latin1.tar")
    with tarfile.open(bad, "w", encoding="utf-8", errors="surrogateescape") as tar:
        for ext, data in (("png", png_bytes(np.zeros((8, 8, 3), np.uint8))), ("txt", b"caf\xe9")):
            info = tarfile.TarInfo("caf\udce9." + ext)  # the raw byte 0xe9: Latin-1, not UTF-8
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    index = build_or_load_index(urls + [bad], str(tmp_path / "idx"), progress=False)
    with pytest.raises(DataError) as e:
        check(index)
    assert str(e.value).startswith(f"{bad}: member name b'caf\\xe9' is not UTF-8")


def test_duplicate_keys_across_shards_refused_before_stage_0(tmp_path, capsys):
    a = write_test_shards(str(tmp_path / "a"), n_shards=2, per_shard=16)
    b = write_test_shards(str(tmp_path / "b"), n_shards=2, per_shard=16, seed=1)  # same key names
    cfg = tiny_config(tmp_path, a + b)
    assert launch_here(cfg, tmp_path / "run") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: duplicate sample key 's000000' in {a[0]} and {b[0]}: keys must be unique across the shard list"]
    assert not os.path.exists(tmp_path / "run" / "stage_0")


def test_malformed_override_is_one_error_line(tmp_path, capsys):
    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=8)
    assert launch_here(tiny_config(tmp_path, urls), tmp_path / "run", "train.lr=[1") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: command line: override 'train.lr=[1': the value is not valid YAML")
    assert len(err.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "run")


def test_second_launch_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=8)
    cfg = tiny_config(tmp_path, urls, **{"train.max_steps": 1})
    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    holder = {"host": "gpu-node-7", "pid": 4242, "slurm_job": "", "started_at": 0}
    (run_dir / "run.lock").write_text(json.dumps(holder))
    assert launch_here(cfg, run_dir) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"error: {run_dir} is in use by another launch (host gpu-node-7, pid 4242" in err[0]
    assert os.listdir(run_dir) == ["run.lock"]  # the refused launch wrote nothing
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder.update(host=guards._holder()["host"], pid=int(dead.stdout))  # this machine, a pid that has ended
    (run_dir / "run.lock").write_text(json.dumps(holder))
    orphan = run_dir / "stage_0" / "checkpoints" / ".step_00000001.pt.abc123.tmp"
    os.makedirs(orphan.parent)
    orphan.write_bytes(b"half a checkpoint")
    assert launch_here(cfg, run_dir) == 0
    assert not orphan.exists() and not (run_dir / "run.lock").exists()  # swept; released at the end


def test_a_lock_held_by_an_unreaped_zombie_is_a_dead_launchs():
    """In a container whose PID 1 is no init, a killed launch's rank stays a zombie: signal 0 still
    reaches its pid, but the launch is over and its lock must be taken over."""
    me = guards._holder()["host"]
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        for _ in range(200):  # until it has exited (and, unreaped, become a zombie)
            if guards._zombie(child):
                break
            time.sleep(0.01)
        assert guards._zombie(child) and guards._gone({"host": me, "pid": child})
        assert not guards._zombie(os.getpid()) and not guards._gone({"host": me, "pid": os.getpid()})
    finally:
        os.waitpid(child, 0)
    assert guards._gone({"host": me, "pid": child})  # reaped: no such process at all


def test_redo_forgets_the_step_and_every_later_one_at_once(tmp_path, capsys):
    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=8)
    cfg = tiny_config(tmp_path, urls, **{"train.max_steps": 1, "train.checkpoint_every": 1})
    assert launch_here(cfg, tmp_path / "run") == 0
    before = json.load(open(tmp_path / "run" / "manifest.json"))["steps"]
    assert launch_here(cfg, tmp_path / "run", "debug.kill_at=nothing", redo="stage_1/embed") == 2
    assert "error: --redo stage_1/embed: no such step; the steps of this run are stage_0/train, integrate, report" \
        in capsys.readouterr().err
    assert launch_here(cfg, tmp_path / "run", redo="stage_0/train") == 0
    after = json.load(open(tmp_path / "run" / "manifest.json"))["steps"]
    assert set(after) == set(before) == {"stage_0/train", "integrate", "report"}
    assert all(after[k]["finished_at"] > before[k]["finished_at"] for k in before)


def test_running_step_with_changed_settings_is_refused(tmp_path):
    from mcl_dist.config.schema import ConfigError
    from mcl_dist.run.manifest import Manifest

    m = Manifest(str(tmp_path))
    m.start("stage_1/embed", {"mode": "image"})
    m.check_running("stage_1/embed", {"mode": "image"})  # same settings: resumes
    with pytest.raises(ConfigError) as e:
        Manifest(str(tmp_path)).check_running("stage_1/embed", {"mode": "joint"})
    assert "step 'stage_1/embed' was interrupted while running with different settings (mode: 'image' -> " \
           "'joint')" in str(e.value) and "--redo stage_1/embed" in str(e.value)


def test_nan_embeddings_stop_kmeans_and_name_the_step_to_redo(tmp_path):
    from mcl_dist.clustering.embedding import part_paths
    from mcl_dist.config.load import load_config
    from mcl_dist.run.run_context import RunContext
    from mcl_dist.steps import KMeansStep

    feats = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float16)
    feats[3, 1] = np.nan
    f, k = part_paths(str(tmp_path / "stage_1" / "embed"), 0, 1)
    os.makedirs(os.path.dirname(f))
    np.save(f, feats)
    np.save(k, np.array([f"k{i}" for i in range(20)]))
    cfg = load_config(None, ["data.synthetic=true", "stages=[{}, {k: 3}]"])
    with pytest.raises(DataError) as e:
        KMeansStep(cfg, stage=1).run(RunContext(cfg, str(tmp_path)))
    assert str(e.value) == (f"stage_1/kmeans on {tmp_path}/stage_1/embed: 1 of 20 rows contain NaN or inf (or "
                            "overflow float32): the embeddings are broken; re-embed with a healthy checkpoint; "
                            "recover with --redo stage_1/embed (it recomputes that step and every later one)")


def test_labels_of_other_shards_name_the_step_to_redo(tmp_path):
    from mcl_dist.clustering.pseudo_labels import save_labels
    from mcl_dist.config.load import load_config
    from mcl_dist.data.webdataset_data import WebDatasetData
    from mcl_dist.run.run_context import RunContext
    from mcl_dist.steps import TrainStep

    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=8)
    cfg = load_config(None, [f"data.train_shards={urls[0]}::{urls[1]}", "stages=[{}, {k: 3}]"])
    keys = np.array([f"s{i:06d}" for i in range(16)])
    save_labels(str(tmp_path / "stage_1" / "labels.npz"), keys, np.zeros(16), np.zeros((1, 16)), "f" * 64)
    with pytest.raises(DataError) as e:
        TrainStep(cfg, stage=1).run(RunContext(cfg, str(tmp_path), data=WebDatasetData("::".join(urls))))
    assert str(e.value).startswith(f"{tmp_path}/stage_1/labels.npz: these labels belong to different shards")
    assert str(e.value).endswith("; recover with --redo stage_1/labels (it recomputes that step and every later one)")


def test_infinite_stream_of_only_bad_samples_ends_after_one_pass(tmp_path):
    from mcl_dist.data.streaming import ShardStream, make_loader

    def decode(raw):
        return {"image": torch.zeros(1), "key": decode_image(raw, ("png",)) and raw["__key__"]}

    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=8, corrupt=tuple(range(16)))
    stream = ShardStream(urls, decode, batch_size=4, rank=0, world=1, seed=0, shuffle_buffer=4, infinite=True)
    batches = list(make_loader(stream, 0))  # before: an endless loop over the same bad samples
    assert len(batches) == 1 and batches[0]["key"] == []
    meta = batches[0]["meta"]
    assert meta["exhausted"] and meta["bad"] == 16 and meta["reasons"] == {"corrupt_image": 16}


def test_wrong_caption_extension_is_refused_before_training(tmp_path, capsys):
    """The same pre-training check runs on every world size; here in this process."""
    urls = write_test_shards(str(tmp_path / "d"), n_shards=4, per_shard=16)
    assert launch_here(tiny_config(tmp_path, urls), tmp_path / "run", "data.caption_ext=caption") == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: no readable sample in 4 shards (missing_caption 64); check data.image_ext ('jpg;png;webp;jpeg') "
        "and data.caption_ext ('caption') against the members of the shards; worst shards: "
        f"{urls[0]} (16), {urls[1]} (16), {urls[2]} (16)"]
    assert not os.path.exists(tmp_path / "run" / "stage_0")


def test_fewer_shards_than_ranks_is_refused_when_stage_0_trains():
    from mcl_dist.data.preflight import check_shard_count

    with pytest.raises(DataError) as e:
        check_shard_count(1, 2, stage0_trains=True)
    assert str(e.value) == ("data.train_shards: 1 shard for 2 ranks; stage 0 gives every rank whole shards, so it "
                            "needs at least 2. Split the data into more shards (mcl-make-shards) or run with "
                            "at most 1 ranks")
    check_shard_count(1, 2, stage0_trains=False)  # a pretrained stage 0: later stages split by sample


# -- under a real 2-rank torchrun ------------------------------------------------------------
@pytest.mark.launch
def test_every_sample_bad_stops_within_one_pass(tmp_path):
    """Corrupt images cannot be seen from tar headers: stage 0 must stop after one pass, not spin."""
    urls = write_test_shards(str(tmp_path / "d"), n_shards=4, per_shard=16, corrupt=tuple(range(64)))
    cfg = tiny_config(tmp_path, urls)
    out = run2(cfg, tmp_path / "run")
    assert out.returncode != 0
    errors = error_lines(out.stderr)
    assert errors and set(errors) <= {
        f"error: stage 0: no readable sample in 2 shards (rank {r}'s share of 4: corrupt_image 32); check "
        "data.image_ext / data.caption_ext against the members of the shards" for r in (0, 1)}, out.stderr[-3000:]
