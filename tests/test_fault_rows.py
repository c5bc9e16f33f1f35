"""The fault table of docs/reliability.md, row by row, on the synthetic demo pipeline under a real 2-rank torchrun.

One finished run (2 stages, evaluation on) is made once per module; every case works on a copy of
its directory, so the file costs one full run plus short launches that stop early. The demo data
is the demo's own generator at a test size (64 train samples in 4 shards, 32 test samples), so a
launch takes seconds, not the demo's minutes. A few parts that need no launch (a decoded header,
the k-means coverage check, the embedding's account across a resume) run in this process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import ROOT, rank_exit_codes, write_test_shards
from launch_helpers import PIPE_CFG, TIMEOUT, _descendants, error_lines, launch_here, run2
from mcl_dist.data.decode import BadSample, decode_image
from mcl_dist.data.streaming import ErrorLog, raw_samples
from mcl_dist.run import verify


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(config, finished run dir, the model JSON the config names) of one uninterrupted run."""
    tmp = tmp_path_factory.mktemp("rows")
    model = tmp / "tiny-vit.json"
    shutil.copy(os.path.join(ROOT, "configs/models/tiny-vit.json"), model)
    cfg = str(tmp / "pipe.yaml")
    with open(cfg, "w") as f:
        # one training checkpoint kept (not 2): each case copies, and each launch checksums, 80 MB less
        f.write(PIPE_CFG.format(data=tmp / "data", root=ROOT).replace(f"{ROOT}/configs/models/tiny-vit.json", str(model))
                .replace("checkpoint_every: 1}", "checkpoint_every: 1, keep_checkpoints: 1}"))
    out = run2(cfg, tmp / "ref")
    assert out.returncode == 0, out.stderr[-4000:]
    return cfg, tmp / "ref", model


def copy_run(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished[1], run)
    return run


def no_traceback(err: str) -> bool:
    """No rank printed a traceback; torchrun's own failure summary (ChildFailedError) is one."""
    return all("ChildFailedError" in tb for tb in err.split("Traceback (most recent call last)")[1:])


def one_error(out) -> str:
    """The launch failed with exactly one `error:` line (from rank 0), exit code 2, no traceback."""
    lines = error_lines(out.stderr)
    assert out.returncode != 0 and len(lines) == 1, out.stderr[-4000:]
    assert no_traceback(out.stderr) and 2 in rank_exit_codes(out), out.stderr[-4000:]
    return lines[0]


def damaged(run, rel: str, step: str, what: str) -> str:
    return (f"error: {run}/{rel} {what}: the output of step {step} is damaged; recover with --redo {step} "
            f"(it recomputes that step and every later one)")


# -- row 1: a deleted embedding part -------------------------------------------------------------
@pytest.mark.launch
def test_row1_deleted_embed_part_is_refused_before_kmeans(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    os.remove(run / "stage_1" / "embed" / "part0001-of0002.feats.npy")
    manifest = (run / "manifest.json").read_bytes()
    out = run2(finished[0], run, redo="stage_1/kmeans")
    assert one_error(out) == damaged(run, "stage_1/embed/part0001-of0002.feats.npy", "stage_1/embed", "is missing")
    assert (run / "manifest.json").read_bytes() == manifest  # stopped before any step ran or was forgotten


def test_row1_embedding_and_kmeans_coverage_checks():
    """The checks behind the embedding's record: every rank's part, every sample clustered or bad."""
    from mcl_dist.clustering.embedding import check_parts
    from mcl_dist.clustering.pseudo_labels import check_complete
    from mcl_dist.data.preflight import DataError

    with pytest.raises(DataError) as e:
        check_parts("/nonexistent/stage_1/embed", 2, "stage_1/embed")
    assert str(e.value) == ("/nonexistent/stage_1/embed/part0000-of0002.feats.npy is missing: the embedding no "
                            "longer covers the shard list (rank 0's share of 2); recover with --redo stage_1/embed "
                            "(it recomputes that step and every later one)")
    check_complete(np.array([0, -1, 2, 1]), 1, "km", "stage_1/embed")  # the one missing was counted bad
    with pytest.raises(DataError) as e:
        check_complete(np.array([0, -1, -1, 1]), 1, "km", "stage_1/embed")
    assert str(e.value).startswith("km: 2 of 4 samples have no cluster but only 1 were counted bad when embedding")


# -- row 3: the model JSON edited after stage 0 ---------------------------------------------------
@pytest.mark.launch
def test_row3_edited_model_file_is_a_changed_setting(finished, tmp_path):
    cfg, _, model = finished
    run = copy_run(finished, tmp_path)
    original = model.read_text()
    before = verify.checksum(str(model))
    try:
        spec = json.loads(original)
        spec["quick_gelu"] = True
        model.write_text(json.dumps(spec))
        out = run2(cfg, run)
        line = one_error(out)
        assert (f"step 'stage_0/train' already finished with different settings (files.model.config_file: "
                f"'{before}' -> '{verify.checksum(str(model))}')") in line and "add --redo stage_0/train" in line
    finally:
        model.write_text(original)


# -- row 4: evaluation data with bad labels -------------------------------------------------------
@pytest.mark.launch
def test_row4_bad_eval_labels_are_skipped_and_counted(finished, tmp_path):
    cfg, ref, _ = finished
    run = copy_run(finished, tmp_path)
    data = ref.parent / "data"
    classes = json.load(open(data / "zero_shot.json"))
    field = sorted(classes)[0]
    shard = str(tmp_path / "bad-test.tar")
    with wds.TarWriter(shard) as sink:
        for i, raw in enumerate(raw_samples(sorted(str(p) for p in data.glob("test-*.tar")), ErrorLog())):
            sample = {k: v for k, v in raw.items() if k in ("__key__", "png", "txt", "json")}
            if i == 0:
                sample["json"] = b"[1, 2]"  # not an object
            elif i == 1:
                sample["json"] = json.dumps({**json.loads(raw["json"]), field: "no-such-class"}).encode()
            sink.write(sample)
    out = run2(cfg, run, f"eval.test_shards={shard}", f"eval.label_fields=[{field}]", redo="eval")
    assert out.returncode == 0, out.stderr[-4000:]
    expected = {"label_not_an_object": 1, "label_not_in_class_names": 1}
    results = json.load(open(run / "eval" / "results.json"))
    assert {m: r["skipped"] for m, r in results.items()} == {m: expected for m in ("stage_0", "stage_1", "integrated")}
    assert json.load(open(run / "data_report.json"))["steps"]["eval"] == {"bad": 2, "reasons": expected}
    report = (run / "report.md").read_text()
    assert "integrated: samples left out: label_not_an_object 1, label_not_in_class_names 1" in report
    assert "| eval | label_not_an_object | 1 |" in report


# -- row 5: a damaged manifest; a truncated checkpoint and a later --redo; row 6: a plain re-run ----
@pytest.mark.launch
def test_row5_damaged_manifest_is_one_error_line(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    (run / "manifest.json").write_text('{"steps": ')
    assert launch_here(finished[0], run) == 2  # read before the world size matters: this process is enough
    err = capsys.readouterr().err
    assert error_lines(err) == [
        f"error: {run}/manifest.json is damaged (not the manifest this program writes); it is the record of which "
        f"steps are done, so nothing in {run} can be trusted without it. Restore it from a copy, or start afresh "
        f"with a new --run-dir (or delete the directory)"] and "Traceback" not in err


@pytest.mark.launch
def test_row5_row6_truncated_checkpoint_is_found_before_use(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    ck = run / "stage_0" / "checkpoint.pt"
    size = ck.stat().st_size
    with open(ck, "r+b") as f:
        f.truncate(size // 2)
    expected = damaged(run, "stage_0/checkpoint.pt", "stage_0/train", f"has {size // 2} bytes, {size} when it was written")
    assert one_error(run2(finished[0], run)) == expected  # row 6: no longer "done already", rc 0
    assert one_error(run2(finished[0], run, redo="stage_1/kmeans")) == expected  # row 5


# -- row 7: one account of bad samples --------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (no pixel data): what a decompression bomb shows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_row7_huge_png_is_too_large_not_corrupt():
    raw = {"__key__": "bomb", "png": _png_header(20000, 20000)}  # 400 M pixels
    for max_pixels in (40_000_000, 0):  # also with our own guard off: PIL's refusal is the same reason
        with pytest.raises(BadSample) as e:
            decode_image(raw, ("png",), max_pixels=max_pixels)
        assert e.value.reason == "too_large"


def test_row7_embedding_account_survives_a_resume(tmp_path):
    """Embedding (image-only) counts bad images and bad captions; a re-run that skips the finished
    part keeps the count instead of writing `bad: 0`."""
    from mcl_dist.clustering.embedding import embed_shards
    from mcl_dist.config.load import load_config
    from mcl_dist.objectives import get_objective

    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=8, corrupt=(1, 2, 3), no_caption=(9,))
    cfg = load_config(None, [f"model.config_file={ROOT}/configs/models/tiny-vit.json", "data.synthetic=true"])
    torch.manual_seed(0)
    bundle = get_objective(cfg).create_bundle(torch.device("cpu"), pretrained="")
    out = tmp_path / "run" / "stage_1" / "embed"
    for _ in range(2):  # the second call finds the part written and skips it
        embed_shards(bundle["model"], bundle, urls, str(out), mode="image", batch_size=4, workers=0,
                     image_ext="png", need_caption=True, run_dir=str(tmp_path / "run"), step="stage_1/embed")
        stats = json.load(open(out / "embed_stats.json"))
        assert (stats["samples"], stats["bad"]) == (12, 4)
        assert stats["reasons"] == {"corrupt_image": 3, "missing_caption": 1}
        entry = json.load(open(tmp_path / "run" / "data_report.json"))["steps"]["stage_1/embed"]
        assert entry == {"seen": 16, "bad": 4, "reasons": {"corrupt_image": 3, "missing_caption": 1},
                         "damaged_shards": []}


def _cut_inside_the_image_of_sample_10(shard: str) -> None:
    """Truncate `shard` inside the image member of its sample 10: that sample keeps the members
    written before its image (what a reader that keeps partial samples would call missing_image)."""
    from mcl_dist.data import tar_index

    scan = tar_index.scan_tar(shard)
    members = range(int(scan["member_start"][10]), int(scan["member_start"][11]))
    image = next(m for m in members if scan["ext_vocab"][scan["member_ext"][m]] == b"png")
    assert image > members[0]  # a member before the image survives the cut
    with open(shard, "r+b") as f:
        f.truncate(int(scan["member_offset"][image]) + 5)


def test_row7_sample_cut_by_a_damaged_tar_is_not_counted_again(tmp_path):
    """The tar index drops the sample in progress at the damage (the pre-training check counts it
    among the tar's lost samples); the stream drops it too: no step decodes it into missing_image,
    and the embedding saw exactly the samples it stored."""
    from collections import Counter

    from torchvision import transforms

    from mcl_dist.clustering.embedding import embed_shards
    from mcl_dist.data.streaming import ShardStream, make_loader
    from mcl_dist.data.tar_index import build_or_load_index
    from mcl_dist.eval.zero_shot import iter_labelled_samples

    urls = write_test_shards(str(tmp_path / "d"), n_shards=2, per_shard=16)
    _cut_inside_the_image_of_sample_10(urls[1])
    index = build_or_load_index(urls, str(tmp_path / "idx"), progress=False)
    stored = sorted(k.decode() for k in index.keys.tolist())
    assert len(stored) == 16 + 10

    def decode(raw):
        return {"image": torch.zeros(1), "key": decode_image(raw, ("png",)) and raw["__key__"]}

    batches = list(make_loader(ShardStream(urls, decode, batch_size=8, rank=0, world=1, seed=None, infinite=False), 0))
    assert sorted(k for b in batches for k in b["key"]) == stored
    assert sum(b["meta"]["bad"] for b in batches) == 0 and urls[1] in batches[-1]["meta"]["damaged_shards"]

    class MeanColour(torch.nn.Module):
        output_dim = 3

        def encode_image(self, images):
            return images.mean(dim=(2, 3))

    out = tmp_path / "run" / "stage_1" / "embed"
    stats = embed_shards(MeanColour(), {"preprocess_val": transforms.ToTensor(), "tokenizer": None}, urls, str(out),
                         mode="image", batch_size=8, workers=0, image_ext="png",
                         run_dir=str(tmp_path / "run"), step="stage_1/embed")
    entry = json.load(open(tmp_path / "run" / "data_report.json"))["steps"]["stage_1/embed"]
    assert stats["samples"] == 26 and entry == {"seen": 26, "bad": 0, "reasons": {}, "damaged_shards": [urls[1]]}
    skipped: Counter = Counter()
    assert len(list(iter_labelled_samples(urls, ["color"], skipped=skipped, counted=urls))) == 26
    assert skipped == {}  # training shards: the pre-training check counted the loss
    list(iter_labelled_samples(urls, ["color"], skipped=skipped))  # shards no check read before: counted here
    assert set(skipped) == {"damaged_tar_member"}


@pytest.mark.launch
def test_row7_truncated_tar_is_counted_once(tmp_path):
    """A training tar cut inside sample 10's image: the loss (6 of 16) is the pre-training check's,
    once; stage 0, the stage-1 embedding and the evaluation (its probe reads the training shards)
    name or skip the damaged tar and add no count of their own."""
    from mcl_dist.synthetic.trifeature import ensure_demo_data

    data = tmp_path / "data"
    ensure_demo_data(str(data), n_train=64, n_test=32, seed=0, samples_per_shard=16, progress=False)  # as the run
    shard = str(data / "train-00000.tar")
    _cut_inside_the_image_of_sample_10(shard)
    cfg = str(tmp_path / "c.yaml")
    with open(cfg, "w") as f:
        f.write(PIPE_CFG.format(data=data, root=ROOT).replace("shuffle_buffer: 16}", "shuffle_buffer: 16, "
                                                                                     "max_bad_fraction: 0.5}"))
    assert launch_here(cfg, tmp_path / "run", "train.max_steps=5") == 0  # 5 steps of 16: stage 0 reads every shard
    steps = json.load(open(tmp_path / "run" / "data_report.json"))["steps"]
    assert steps["preflight"] == {"bad": 6, "reasons": {"lost_in_damaged_tar": 6}}
    assert steps["stage_0/train"]["reasons"] == {} and steps["stage_0/train"]["damaged_shards"] == [shard]
    assert steps["stage_1/embed"] == {"seen": 58, "bad": 0, "reasons": {}, "damaged_shards": [shard]}
    assert json.load(open(tmp_path / "run" / "stage_1" / "embed" / "embed_stats.json"))["samples"] == 58
    assert steps["eval"] == {"bad": 0, "reasons": {}}
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.count("lost_in_damaged_tar") == 1 and "| preflight | lost_in_damaged_tar | 6 |" in report


# -- row 8: two launches at once; a killed launcher ------------------------------------------------
def _start(cfg: str, run, *overrides: str) -> subprocess.Popen:
    """The README's command: `torchrun --standalone` (a free rendezvous port of its own)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "launch/pretrain.py",
           "--config", cfg, "--run-dir", str(run), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait(cond, what: str, limit: float = TIMEOUT) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < limit, f"gave up waiting: {what}"
        time.sleep(0.2)


@pytest.mark.launch
def test_row8_row2_second_launch_refused_ranks_die_with_their_launcher_resume_with_other_workers_refused(
        finished, tmp_path):
    """Row 8, then row 2 on what row 8's kill left (one interrupted stage 0 serves both rows)."""
    cfg, run = finished[0], tmp_path / "run"
    long = "train.max_steps=100000"
    first = _start(cfg, run, long)  # still training when it is killed
    try:
        _wait(lambda: list((run / "stage_0" / "checkpoints").glob("step_*.pt")), "the first launch's first checkpoint")
        second = _start(cfg, run)  # the README's command again: its own free port, then the lock
        out, err = second.communicate(timeout=TIMEOUT)
        lines = error_lines(err)
        assert second.returncode != 0 and len(lines) == 1, err[-4000:]
        assert lines[0].startswith(f"error: {run} is in use by another launch (host ") and no_traceback(err)
        ranks = [p for p in _descendants(first.pid) if p != first.pid]
        assert ranks
        os.killpg(first.pid, signal.SIGKILL)  # the launcher's process group; each rank has a session of its own
        first.communicate()
        _wait(lambda: not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in ranks), "the ranks to exit", 120)
    finally:
        for pid in _descendants(first.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    # row 2: stage 0 was interrupted; resuming it with another worker count is refused (the dead
    # launch's lock is taken over first: the refusal comes from the resume, not from the lock)
    assert list((run / "stage_0" / "checkpoints").glob("step_*.pt"))
    out = run2(cfg, run, long, "data.workers=2")
    assert one_error(out) == (
        "error: stage 0 was interrupted with 1 data loader worker per rank and would resume with 2: its checkpoint "
        "holds each worker's place in the stream, so resuming would read other samples than an uninterrupted run. "
        "Resume with data.workers=1, or add --redo stage_0/train to train stage 0 afresh")
    assert not (run / "stage_0" / "checkpoint.pt").exists()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


# -- row 9: minor ----------------------------------------------------------------------------------
@pytest.mark.launch
def test_row9_manifest_paths_are_relative(finished):
    steps = json.load(open(finished[1] / "manifest.json"))["steps"]

    def strings(v):
        return [v] if isinstance(v, str) else [s for x in (v.values() if isinstance(v, dict) else v if
                                                            isinstance(v, list) else []) for s in strings(x)]

    paths = [s for rec in steps.values() for s in strings(rec["outputs"]) if "/" in s or s.endswith((".pt", ".md"))]
    assert paths and not [p for p in paths if os.path.isabs(p)], paths
    assert steps["report"]["outputs"]["report"] == "report.md"
    assert "stage_0/checkpoint.pt" in steps["stage_0/train"]["files"]


@pytest.mark.launch
def test_row9_redo_removes_the_report_files(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    assert (run / "report.md").exists() and (run / "loss_curves.png").exists()
    out = run2(finished[0], run, "debug.kill_at=integrate", redo="integrate")
    assert out.returncode != 0 and (run / "integrated" / "model.pt").exists()
    assert not [p for p in ("report.md", "loss_curves.png", "cluster_sizes.png", "mmvp_by_stage.png")
                if (run / p).exists()]


@pytest.mark.launch
def test_row9_finished_rerun_writes_nothing(finished, tmp_path):
    run = copy_run(finished, tmp_path)

    def snapshot() -> dict:
        return {os.path.relpath(os.path.join(r, n), run): os.stat(os.path.join(r, n)).st_mtime_ns
                for r, _, names in os.walk(run) for n in names}

    before = snapshot()
    out = run2(finished[0], run)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stderr.count("done already, skipped") == 8
    assert snapshot() == before
