"""Fault matrix (docs/reliability.md): every bad input and kill point gives one clear outcome.

Bad inputs that are refused before training run the real pipeline in this process (world size 1,
no torchrun: the same code path, much faster); the hang cases and every kill point run under a
real 2-rank torchrun, each bounded by a subprocess timeout. The kill cases share one
uninterrupted reference run and must end with its exact weights.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from conftest import ROOT, free_port, png_bytes, tiny_config, write_test_shards
from mcl_dist import rundir
from mcl_dist.data import tar_index
from mcl_dist.data.decode import BadSample, decode_image
from mcl_dist.data.preflight import DataError, check_index
from mcl_dist.data.tar_index import build_or_load_index

# seconds per launch (generous: a loaded 2-core machine): a hang fails the test, never stalls it
TIMEOUT = int(os.environ.get("MCL_TEST_LAUNCH_TIMEOUT", "900"))


def _descendants(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts every rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def run2(cfg: str, run_dir, *overrides, redo: str = "") -> subprocess.CompletedProcess:
    """launch/pretrain.py under a real 2-rank torchrun (gloo), killed as a whole on a hang."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir), *overrides]
    cmd += ["--redo", redo] if redo else []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in _descendants(proc.pid):  # the launcher, its ranks and their loader workers
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        out, err = proc.communicate()
        raise AssertionError(f"launch did not end within {TIMEOUT}s (a hang):\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_here(cfg: str, run_dir, *overrides, redo: str = "") -> int:
    """The real entry point in this process (world size 1): what `python launch/pretrain.py` does."""
    from mcl_dist.launcher import launch

    return launch(cfg, str(run_dir), list(overrides), redo=redo)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


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
    holder.update(host=rundir._holder()["host"], pid=int(dead.stdout))  # this machine, a pid that has ended
    (run_dir / "run.lock").write_text(json.dumps(holder))
    orphan = run_dir / "stage_0" / "checkpoints" / ".step_00000001.pt.abc123.tmp"
    os.makedirs(orphan.parent)
    orphan.write_bytes(b"half a checkpoint")
    assert launch_here(cfg, run_dir) == 0
    assert not orphan.exists() and not (run_dir / "run.lock").exists()  # swept; released at the end


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
    from mcl_dist.config import ConfigError
    from mcl_dist.manifest import Manifest

    m = Manifest(str(tmp_path))
    m.start("stage_1/embed", {"mode": "image"})
    m.check_running("stage_1/embed", {"mode": "image"})  # same settings: resumes
    with pytest.raises(ConfigError) as e:
        Manifest(str(tmp_path)).check_running("stage_1/embed", {"mode": "joint"})
    assert "step 'stage_1/embed' was interrupted while running with different settings (mode: 'image' -> " \
           "'joint')" in str(e.value) and "--redo stage_1/embed" in str(e.value)


def test_nan_embeddings_stop_kmeans_and_name_the_step_to_redo(tmp_path):
    from mcl_dist.config_load import load_config
    from mcl_dist.embed import part_paths
    from mcl_dist.run_context import RunContext
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
    from mcl_dist.config_load import load_config
    from mcl_dist.labels import save_labels
    from mcl_dist.run_context import RunContext
    from mcl_dist.steps import TrainStep

    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=8)
    cfg = load_config(None, [f"data.train_shards={urls[0]}::{urls[1]}", "stages=[{}, {k: 3}]"])
    keys = np.array([f"s{i:06d}" for i in range(16)])
    save_labels(str(tmp_path / "stage_1" / "labels.npz"), keys, np.zeros(16), np.zeros((1, 16)), "f" * 64)
    with pytest.raises(DataError) as e:
        TrainStep(cfg, stage=1).run(RunContext(cfg, str(tmp_path), urls=urls))
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


# -- kill points: a shared uninterrupted reference, then one run killed at every point -----------
PIPE_CFG = """
data: {{synthetic: true, synthetic_dir: {data}, synthetic_train: 64, synthetic_test: 32,
        synthetic_samples_per_shard: 16, workers: 1, shuffle_buffer: 16}}
model: {{config_file: {root}/configs/models/tiny-vit.json}}
train: {{global_batch_size: 16, max_steps: 3, lr: 1.0e-3, warmup_steps: 1, log_every: 1, checkpoint_every: 1}}
cluster: {{kmeans_iters: 4, kmeans_tol: 0.0, min_label_size: 2, embed_batch_size: 32}}
stages: [{{}}, {{k: 3, group_size: 4}}]
eval: {{probe_max_samples: 32, batch_size: 32}}
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    cfg = str(tmp / "pipe.yaml")
    with open(cfg, "w") as f:
        f.write(PIPE_CFG.format(data=tmp / "data", root=ROOT))
    out = run2(cfg, tmp / "ref", "eval.enabled=false")  # evaluation does not change any weights
    assert out.returncode == 0, out.stderr[-4000:]
    return cfg, tmp / "ref"


def same_weights(a_dir, b_dir) -> None:
    for s in (0, 1):
        a = torch.load(a_dir / f"stage_{s}" / "checkpoint.pt", weights_only=True)["state_dict"]
        b = torch.load(b_dir / f"stage_{s}" / "checkpoint.pt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"stage {s} differs"


def test_killed_at_every_point_resumes_to_the_reference_weights(reference, tmp_path):
    cfg, ref = reference
    run = tmp_path / "run"

    def steps() -> dict:
        return json.load(open(run / "manifest.json"))["steps"]

    def status() -> dict:
        return {k: v["status"] for k, v in steps().items()}

    # 1. killed while writing stage 0's step-2 checkpoint: step 1's is kept, the temp file orphaned
    out = run2(cfg, run, "debug.kill_at=write:step_00000002.pt")
    assert out.returncode != 0 and status() == {"stage_0/train": "running"}
    names = sorted(os.listdir(run / "stage_0" / "checkpoints"))
    assert len(names) == 2 and names[0].startswith(".step_00000002.pt.") and names[0].endswith(".tmp")
    assert names[1] == "step_00000001.pt"
    # 2. killed while writing rank 0's embedding part; the dead launch's lock and temp file go
    out = run2(cfg, run, "debug.kill_at=write:part0000-of0002.feats.npy")
    assert out.returncode != 0
    assert "taking over the lock of a launch that is gone" in out.stderr
    assert "removed 1 temporary file left by an interrupted launch" in out.stderr
    assert "resuming stage 0 from" in out.stderr and "(step 1)" in out.stderr
    assert status() == {"stage_0/train": "done", "stage_1/embed": "running"}
    assert not (run / "stage_1" / "embed" / "part0000-of0002.feats.npy").exists()
    finished = {k: v["finished_at"] for k, v in steps().items() if v["status"] == "done"}
    # 3. killed inside the Lloyd loop, after 2 of 4 centroid updates
    out = run2(cfg, run, "debug.kill_at=stage_1/kmeans:2")
    assert out.returncode != 0  # rank 1 may have been killed mid-write too: one or two temp files
    assert re.search(r"removed [12] temporary files? left by an interrupted launch", out.stderr)
    assert status()["stage_1/embed"] == "done" and status()["stage_1/kmeans"] == "running"
    assert not (run / "stage_1" / "kmeans" / "kmeans.json").exists()
    # 4. killed with the labels written but not yet recorded
    out = run2(cfg, run, "debug.kill_at=stage_1/labels")
    assert out.returncode != 0 and status()["stage_1/kmeans"] == "done"
    assert status()["stage_1/labels"] == "running" and (run / "stage_1" / "labels.npz").exists()
    # 5. killed right after stage 1's step-2 checkpoint: the labels are recorded, training resumes
    out = run2(cfg, run, "debug.kill_at=stage_1/train:2")
    assert out.returncode != 0 and status()["stage_1/labels"] == "done"
    assert status()["stage_1/train"] == "running" and "step_00000002.pt" in os.listdir(run / "stage_1" / "checkpoints")
    assert not (run / "stage_1" / "checkpoint.pt").exists()
    # 6. killed half-way through evaluation (after the stage-0 model)
    out = run2(cfg, run, "debug.kill_at=eval:1")
    assert out.returncode != 0 and "resuming stage 1 from" in out.stderr and "(step 2)" in out.stderr
    assert {k: status()[k] for k in ("stage_1/train", "integrate", "eval")} == {
        "stage_1/train": "done", "integrate": "done", "eval": "running"}
    assert not (run / "eval" / "results.json").exists()
    # 7. a plain re-run finishes: nothing finished was redone, the weights are the reference's
    out = run2(cfg, run)
    assert out.returncode == 0 and "Report: " in out.stdout, out.stderr[-3000:]
    assert all(v == "done" for v in status().values()) and len(status()) == 8
    for step, at in finished.items():
        assert steps()[step]["finished_at"] == at, step
    same_weights(ref, run)


def test_redo_after_broken_embeddings_recomputes_the_same_weights(reference, tmp_path):
    """The k-means error names `--redo stage_1/embed` (test above); following it repairs the run."""
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    part = run / "stage_1" / "embed" / "part0001-of0002.feats.npy"
    feats = np.load(part)
    feats[0, 0] = np.inf
    np.save(part, feats)
    out = run2(cfg, run, "eval.enabled=false", redo="stage_1/embed")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step stage_0/train: done already, skipped" in out.stderr
    assert "step stage_1/embed: recomputing it and every later step (--redo stage_1/embed)" in out.stderr
    assert np.isfinite(np.load(part).astype(np.float32)).all()
    same_weights(ref, run)


def test_another_world_size_on_a_finished_run_is_one_error_line(reference, tmp_path, capsys):
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    assert launch_here(cfg, run, "eval.enabled=false") == 2  # world size 1 here, 2 in the reference
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "step 'stage_0/train' already finished with different settings (world_size: 2 -> 1)" \
        in err[0] and "add --redo stage_0/train" in err[0]
