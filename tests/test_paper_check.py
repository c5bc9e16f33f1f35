"""The CPU smoke of the one GPU script (mcl_dist/bench/paper_check.py): every part runs on tiny
sizes (tiny model, gloo, JPEG shards written here, faiss-cpu) and the JSON holds every field with
sane values. Its timings mean nothing and are not asserted."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_paper_check_cpu_smoke(tmp_path):
    out, tab = tmp_path / "smoke.json", tmp_path / "smoke.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "mcl_dist.bench.paper_check", "--cpu-smoke", "--out", str(out),
                           "--table", str(tab), "--work-dir", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    res = json.loads(out.read_text())
    assert proc.returncode == 0 and res["errors"] == [], (res["errors"], proc.stderr[-3000:])
    assert res["mode"] == "cpu-smoke" and set(res["part_seconds"]) == {
        "ceilings", "data", "loader", "train tiny_locked", "embed", "kmeans"}
    assert res["ceilings"]["matmul_tflops"] > 0
    data = res["data"]
    assert data["jpeg256_samples"] == 48 and 10 < data["jpeg256_kb"] < 70 and data["jpeg512_kb"] > data["jpeg256_kb"]
    ld = res["loader"]
    assert ld["jpeg256_per_core"] > 0 and ld["jpeg512_per_core"] > 0 and ld["jpeg256_all_workers"] > 0
    assert all(isinstance(v, int) and v >= 1 for v in ld["workers_needed_anchors"].values())

    t = res["train"]["tiny_locked"]
    assert t["recipe"]["lock_image"] and t["recipe"]["lock_text"] and t["recipe"]["quick_gelu"]
    assert t["batch_per_gpu"] == 8 and t["batch_note"] == "the paper's per-GPU batch"
    for arm in ("ours", "open_clip_train"):
        assert len(t[arm]["samples_per_s"]) == t["rounds"] == 1 and all(x > 0 for x in t[arm]["samples_per_s"])
        assert all(0 <= x < 1 for x in t[arm]["data_wait_share"])
        assert len(t[arm]["mfu_of_measured_matmul"]) == 1 and "mfu" not in t[arm]  # no data-sheet peak for a CPU
    r = t["ratio"]
    assert r["min"] <= r["median"] <= r["max"] and r["ratios"] == [
        o / oc for o, oc in zip(t["ours"]["samples_per_s"], t["open_clip_train"]["samples_per_s"])]
    f = t["flops"]
    assert f["total"] == f["forward"] + f["backward"] and f["per_sample"] == f["total"] / 8
    assert f["backward"] < f["forward"]  # locked towers: most of the model runs forward only
    assert t["model_only_samples_per_s"] > 0

    e = res["embed"]["tiny-vit"]
    assert e["pipeline_samples"] == 48 and e["model_bf16_samples_per_s"] > 0 and e["pipeline_over_model_bf16"] > 0
    for key, k in (("k4", 4), ("k16", 16)):
        km = res["kmeans"][key]
        assert km["k"] == k and km["n"] == 5000 and km["path"].startswith("host fp16 input, spherical")
        assert abs(km["objective_ratio"] - 1) < 1e-3 and km["time_ratio"] > 0
    text = tab.read_text()
    assert "tiny_locked (tiny-vit, fp32)" in text and "5,000 x 32, K 16" in text


def test_paper_check_budget_skips_and_still_writes(tmp_path):
    """Past --budget-s no part starts: each is listed as skipped, and the JSON and table are written."""
    out = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, "-m", "mcl_dist.bench.paper_check", "--cpu-smoke", "--budget-s", "0",
                           "--parts", "ceilings,kmeans", "--out", str(out)], cwd=ROOT,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300)
    res = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert res["skipped"] == ["ceilings", "data", "kmeans"] and res["errors"] == [] and res["part_seconds"] == {}
    assert "paper_check (cpu-smoke)" in proc.stdout and "skipped (time budget): ceilings, data, kmeans" in proc.stdout
