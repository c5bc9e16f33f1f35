"""Kill points (docs/reliability.md): one uninterrupted 2-rank reference run, then one run killed at
every point of the pipeline, resumed each time, which must end with the reference's exact weights;
and the repairs the errors name (--redo), which must recompute the same weights.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT
from launch_helpers import PIPE_CFG, error_lines, launch_here, run2


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


@pytest.mark.launch
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


@pytest.mark.launch
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


@pytest.mark.launch
def test_another_world_size_on_a_finished_run_is_one_error_line(reference, tmp_path, capsys):
    cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    assert launch_here(cfg, run, "eval.enabled=false") == 2  # world size 1 here, 2 in the reference
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "step 'stage_0/train' already finished with different settings (world_size: 2 -> 1)" \
        in err[0] and "add --redo stage_0/train" in err[0]
