"""The CPU smoke of the one GPU script (mcl_dist/bench/paper_check.py): every part runs on tiny
sizes (tiny model, JPEG shards written here, faiss-cpu and the plain-torch Lloyd peer) and the
JSON holds every field with sane values; both trainer arms are timed over the same number of
steps. The deadline scheduler on its own: a part that does not fit is skipped, the rest run, and
the JSON is on disk after every part. Timings mean nothing and are not asserted."""
import json
import os

import pytest

from conftest import ROOT
import forked_ranks
from mcl_dist.bench.paper_check import ORDER, SMOKE, done_parts, schedule, wanted
from mcl_dist.core.files import read_json, write_json


@pytest.mark.launch
def test_paper_check_cpu_smoke(tmp_path):
    out, tab = tmp_path / "smoke.json", tmp_path / "smoke.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = forked_ranks.python(["-m", "mcl_dist.bench.paper_check", "--cpu-smoke", "--out", str(out),
                                "--table", str(tab), "--work-dir", str(tmp_path / "work")], cwd=ROOT, env=env, timeout=900)
    res = json.loads(out.read_text())
    assert proc.returncode == 0 and res["errors"] == [], (res["errors"], proc.stderr[-3000:])
    ran = res["ran"]
    assert res["mode"] == "cpu-smoke" and ran == [p for p in ORDER if p in ran]  # in the scheduler's order
    assert set(ran) == {"preflight", "ceilings", "data", "loader", "train tiny_locked", "embed", "kmeans"}
    pre = res["preflight"]
    assert pre["torch"] and pre["open_clip_torch"] and pre["webdataset"] and pre["tiny_step_samples_per_s"] > 0
    assert res["ceilings"]["matmul_tflops"] > 0
    data = res["data"]
    assert data["jpeg256_samples"] == 48 and 10 < data["jpeg256_kb"] < 70 and data["jpeg512_kb"] > data["jpeg256_kb"]
    ld = res["loader"]
    assert ld["jpeg256_per_core"] > 0 and ld["jpeg512_per_core"] > 0 and ld["jpeg256_all_workers"] > 0
    assert all(isinstance(v, int) and v >= 1 for v in ld["workers_needed_anchors"].values())

    t = res["train"]["tiny_locked"]
    assert t["recipe"]["lock_image"] and t["recipe"]["lock_text"] and t["recipe"]["quick_gelu"]
    assert t["batch_per_gpu"] == 8 and t["batch_note"] == "the paper's per-GPU batch" and t["halved_from"] == []
    # 2 workers: 3 waves of 2 batches, the first wave warm-up; both arms timed over the same 4 steps
    assert (t["recipe"]["workers"], t["recipe"]["steps"], t["recipe"]["warmup"]) == (2, 6, 2)
    assert t["ours"]["timed_steps"] == t["open_clip_train"]["timed_steps"] == [4]
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
    assert not list((tmp_path / "work").rglob("*.pt"))  # the trainer children write no checkpoint

    e = res["embed"]["tiny-vit"]
    assert e["pipeline_samples"] == 48 and e["model_bf16_samples_per_s"] > 0 and e["pipeline_over_model_bf16"] > 0
    for key, k in (("k4", 4), ("k16", 16)):
        km = res["kmeans"][key]
        assert km["k"] == k and km["n"] == 5000 and km["path"].startswith("host fp16 input, spherical")
        assert abs(km["objective_ratio"] - 1) < 1e-3 and abs(km["torch_lloyd_objective_ratio"] - 1) < 1e-3
        assert km["best_peer"] in ("torch-lloyd", km["faiss"]) and km["best_peer_time_ratio"] > 0
    k4 = res["kmeans"]["k4"]
    # the bytes moved are far more than the fp16 input read once per pass
    assert k4["bytes_moved"] > 5 * (k4["iters"] + 2) * 5000 * 32 * 2 and k4["bandwidth_gbs"] > 0
    text = tab.read_text()
    assert "tiny_locked (tiny-vit, fp32) | 8 | 4 / 4 |" in text and "5,000 x 32, K 16" in text


def test_the_scheduler_skips_what_does_not_fit_and_writes_after_every_part(tmp_path):
    """A fake clock: each part takes 10 s; the deadline is 35 s. The 30 s part does not fit after
    two parts (15 s left) and is skipped, the 5 s part after it still runs. Each part finds the
    previous part already in the JSON on disk."""
    out = tmp_path / "r.json"
    now = [0.0]
    result = {"errors": [], "skipped": [], "skip_reasons": {}, "part_seconds": {}, "train": {}, "data": {"x": 1}}
    seen_on_disk = []

    def part(name):
        def run():
            seen_on_disk.append(sorted(k for k in ("preflight", "ceilings", "kmeans") if k in read_json(out))
                                if out.exists() else [])
            now[0] += 10
            return {"part": name}
        return run

    parts = [(p, part(p)) for p in ("preflight", "ceilings", "train vit_l14_paper", "kmeans")]
    expected = {"preflight": 5, "ceilings": 5, "train vit_l14_paper": 30, "kmeans": 5}
    schedule(parts, expected, 35.0, result, lambda: write_json(result, str(out)), clock=lambda: now[0])
    res = read_json(out)
    assert res["skipped"] == ["train vit_l14_paper"] and res["skip_reasons"] == {
        "train vit_l14_paper": "expected 30 s, 15 s left"}
    assert res["ran"] == ["preflight", "ceilings", "kmeans"]
    assert seen_on_disk == [[], ["preflight"], ["ceilings", "preflight"]]
    assert res["kmeans"] == {"part": "kmeans"} and "vit_l14_paper" not in res["train"]


def test_a_failed_preflight_stops_the_rest(tmp_path):
    result = {"errors": [], "skipped": [], "skip_reasons": {}, "part_seconds": {}, "train": {}}
    writes = []
    schedule([("preflight", lambda: 1 / 0), ("kmeans", lambda: {"x": 1})], {}, 100.0, result,
             lambda: writes.append(1))
    assert result["errors"][0].startswith("preflight: ZeroDivisionError") and "kmeans" not in result
    assert result["skip_reasons"] == {"kmeans": "the preflight failed"} and writes


def test_parts_order_and_resume():
    gpu_order = wanted("", {"recipes": {"vit_l14_paper": 0, "vit_b32": 0, "vit_l14_paper_fp16": 0}})
    assert gpu_order.index("kmeans") < gpu_order.index("train vit_b32")  # k-means before ViT-B-32
    assert gpu_order[0] == "preflight" and gpu_order[-1] == "train vit_l14_paper_fp16"
    assert wanted("kmeans", SMOKE) == ["preflight", "kmeans"]
    prior = {"preflight": {"a": 1}, "kmeans": {"k4": {}}, "embed": {"m": {}}, "train": {"tiny_locked": {"r": 1}},
             "errors": ["embed: failed"]}
    assert done_parts(prior) == {"kmeans": {"k4": {}}, "train tiny_locked": {"r": 1}}  # failed parts and the preflight rerun


def test_a_short_deadline_skips_parts_and_still_writes(tmp_path):
    """Past --deadline-s no part starts (beyond the preflight, which fits): each is listed as
    skipped with what it needed, and the JSON and table are written."""
    out = tmp_path / "b.json"
    proc = forked_ranks.python(["-m", "mcl_dist.bench.paper_check", "--cpu-smoke", "--deadline-s", "12",
                                "--expect", "kmeans=60", "--parts", "ceilings,kmeans", "--out", str(out)], cwd=ROOT,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=300)
    res = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert res["skipped"] == ["kmeans"] and res["errors"] == [] and res["ran"] == ["preflight", "ceilings"]
    assert res["skip_reasons"]["kmeans"].startswith("expected 60 s") and res["expected_s"]["kmeans"] == 60
    assert "paper_check (cpu-smoke)" in proc.stdout and "skipped: kmeans (expected 60 s" in proc.stdout
