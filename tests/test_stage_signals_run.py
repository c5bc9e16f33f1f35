"""A real 3-stage run (one process, tiny ViT, synthetic shards) with k: auto and CKA integration
weights: the manifest records the chosen K and its curve, the label-free stop signals per stage
and the integration weights; changing only the integration (weights and scaling) redoes only
integrate and report."""
import json
import os

import pytest

from conftest import ROOT
import forked_ranks
from mcl_dist.integration.integrated_model import load_model
from mcl_dist.run import verify

ARGS = ["data.synthetic=true", "data.synthetic_train=256", "data.synthetic_test=64",
        "data.synthetic_samples_per_shard=64", "data.workers=0", "data.augment=false",
        f"model.config_file={ROOT}/configs/models/tiny-vit.json", "train.global_batch_size=32", "train.max_steps=3",
        "train.warmup_steps=1", "train.log_every=1", "cluster.kmeans_iters=5", "cluster.min_label_size=2",
        "cluster.k_candidates=[3, 6, 12]", "stages=[{}, {k: auto, group_size: 4}, {k: 4, group_size: 4}]",
        "model.integration_samples=64", "eval.enabled=false"]


def run(run_dir, data_dir, *more):
    cfg = data_dir.parent / "signals.yaml"
    cfg.write_text("data: {synthetic: true}\n")
    argv = ["launch/pretrain.py", "--config", str(cfg), "--run-dir", str(run_dir),
            f"data.synthetic_dir={data_dir}", *ARGS, *more]
    proc = forked_ranks.python(argv, cwd=ROOT, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.load(open(os.path.join(run_dir, "manifest.json")))["steps"]


@pytest.mark.launch
def test_auto_k_stop_signals_and_cka_weights_are_recorded(tmp_path):
    run_dir = tmp_path / "run"
    steps = run(run_dir, tmp_path / "data", "model.integration_weights=cka_drop", "model.integration_redundant_cka=0.99")
    km = steps["stage_1/kmeans"]["outputs"]
    assert km["k"] in (3, 6, 12) and [k for k, _ in km["k_curve"]][0] == 3
    assert json.load(open(run_dir / "stage_1" / "kmeans" / "kmeans.json"))["k_rule"]["chosen"] == km["k"]
    assert steps["stage_2/kmeans"]["outputs"]["k"] == 4 and "k_curve" not in steps["stage_2/kmeans"]["outputs"]
    for s in (1, 2):
        sig = steps[f"stage_{s}/labels"]["outputs"]
        assert 0 <= sig["signal/survived_samples"] <= 1 and 0 <= sig["signal/survived_labels"] <= 1
    assert "signal/cka_prev" not in steps["stage_1/labels"]["outputs"]  # nothing before stage 0
    assert 0 <= steps["stage_2/labels"]["outputs"]["signal/cka_prev"] <= 1 + 1e-9
    integ = steps["integrate"]["outputs"]
    assert integ["cka"][0] is None and all(0 <= c <= 1 + 1e-9 for c in integ["cka"][1:])
    assert integ["weights"] == [1.0 if c is None or c < 0.99 else 0.0 for c in integ["cka"]]
    model, _, _ = load_model(str(run_dir / "integrated" / "model.pt"))
    assert model.weights == integ["weights"]

    ckpt = run_dir / "stage_2" / "checkpoint.pt"
    before = os.stat(ckpt).st_mtime_ns
    # both integration settings at once (the similarity scaling and the per-stage weights): integrate only
    steps = run(run_dir, tmp_path / "data", "model.integration_weights=cka_weight", "model.integration=raw",
                "--redo", "integrate")
    assert os.stat(ckpt).st_mtime_ns == before  # the stages were not retrained
    integ2 = steps["integrate"]["outputs"]
    assert integ2["cka"] == integ["cka"] and integ2["weights"] == [1.0] + [1 - c for c in integ["cka"][1:]]
    model, _, _ = load_model(str(run_dir / "integrated" / "model.pt"))
    assert model.integration == "raw" and model.weights == integ2["weights"]

    # the manifest's bookkeeping with the integrate step's new settings: its file is recorded (size + checksum) like
    # any step's, and a finished re-run of the same command skips everything and writes nothing
    model_pt = run_dir / "integrated" / "model.pt"
    assert steps["integrate"]["files"]["integrated/model.pt"] == {"size": os.path.getsize(model_pt),
                                                                  "sum": verify.checksum(str(model_pt))}
    before = {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns for r, _, ns in os.walk(run_dir) for n in ns}
    run(run_dir, tmp_path / "data", "model.integration_weights=cka_weight", "model.integration=raw")
    assert {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns for r, _, ns in os.walk(run_dir)
            for n in ns} == before
