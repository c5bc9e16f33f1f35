"""mcl_dist.bench.gpu_check (`mcl-gpu-check`): its --cpu-smoke run under a real torchrun (2 gloo ranks, real shards, real
open_clip_train peer, real k-means and faiss), plus the report and memory probes on their own."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import torchrun
from mcl_dist.bench.gpu_check import guarded
from mcl_dist.bench.gpu_report import SCHEMA, TARGETS, finish, table
from mcl_dist.bench.kmeans_check import table_peak
from mcl_dist.bench.memprobe import Polled

# fields that are None in a healthy CPU smoke: faiss_error (faiss-cpu is installed), and the
# cross-device ratio (faiss-cpu and ours both run on the CPU)
MAY_BE_NONE = {("kmeans", "faiss_error"), ("kmeans", "cross_device_time_ratio")}


@pytest.mark.launch
def test_cpu_smoke_on_two_gloo_ranks_writes_every_field(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = torchrun(["-m", "mcl_dist.bench.gpu_check", "--cpu-smoke", "--out", str(out), "--work-dir", str(tmp_path / "work")],
                    timeout=900)  # ~60 s on 2 idle cores
    r = json.loads(out.read_text())
    assert r["errors"] == [] and r["ok"] is True, r["errors"]
    assert (r["mode"], r["world_size"], r["backend"], r["targets_judged"]) == ("cpu-smoke", 2, "gloo", False)
    for part, keys in SCHEMA.items():
        assert sorted(r[part]) == sorted(keys), part
        missing = [k for k in keys if r[part][k] is None and (part, k) not in MAY_BE_NONE]
        assert not missing, (part, missing)
    c = r["collectives"]
    assert c["all_gather_ok"] and c["all_reduce_ok"] and c["loss_equal"]
    assert c["loss_abs_diff"] <= 1e-5 and c["grad_max_abs_diff"] <= 1e-5 and c["allreduce_busbw_gbs"] > 0
    t, s = r["train"], r["stage1"]
    assert t["ratio"] == pytest.approx(t["ours_samples_per_s"] / t["open_clip_samples_per_s"])
    assert s["ratio"] == pytest.approx(s["stage1_samples_per_s"] / s["stage0_samples_per_s"])
    assert s["stage0_samples_per_s"] == t["ours_samples_per_s"] and t["global_batch"] == 32
    assert r["embed"]["pipeline_samples"] == t["samples"]  # every synthetic sample embedded once
    k = r["kmeans"]
    assert k["faiss"].startswith("faiss-cpu") and k["peak_source"] == "measured device copy"
    # same init, same data, exact Lloyd: our k-means must land where faiss does
    assert k["inertia_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert k["bandwidth_fraction"] == pytest.approx(k["bandwidth_gbs"] / k["copy_bandwidth_gbs"])
    mem = [r["collectives"]["peak_mem_gb"], t["ours_peak_mem_gb"], t["open_clip_peak_mem_gb"], s["peak_mem_gb"],
           r["embed"]["pipeline_peak_mem_gb"], r["embed"]["model_peak_mem_gb"], k["ours_peak_mem_gb"],
           k["faiss_peak_mem_gb"]]
    assert all(m > 0 for m in mem), mem
    assert {name for name, *_ in TARGETS} == set(r["targets"])
    assert r["targets"]["train_ratio"]["value"] == t["ratio"]
    assert "1 gathered loss = single" in proc.stdout and "(cpu)" in proc.stdout


def test_report_fills_failed_parts_and_judges_targets():
    result = {"mode": "gpu", "world_size": 8, "device": "NVIDIA H100 80GB HBM3", "backend": "nccl", "torch": "x",
              "targets_judged": True, "seconds": 1.0, "part_seconds": {"train": 1.0}, "errors": [],
              "collectives": {"ok": True, "loss_equal": True, "all_gather_ok": True, "all_reduce_ok": True},
              "train": {"ratio": 0.99}, "stage1": {"ratio": 0.95},
              "kmeans": {"time_ratio": 1.0, "inertia_ratio": 1.0011, "bandwidth_fraction": 0.5}}
    guarded(result, "embed", lambda: sys.exit("child failed: out of memory"))
    finish(result)
    assert result["ok"] is False and result["errors"] == ["embed: child failed: out of memory"]
    assert result["embed"] == {key: None for key in SCHEMA["embed"]}
    met = {name: v["met"] for name, v in result["targets"].items()}
    assert met == {"train_ratio": False, "stage1_ratio": True, "kmeans_time_ratio": True,
                   "kmeans_inertia_ratio": False, "kmeans_bandwidth_fraction": True}
    text = table(result)
    assert "MISS" in text and "PASS" in text and "error: embed: child failed" in text


def test_peak_bandwidth_table_prefers_the_specific_name():
    assert table_peak("NVIDIA GH200 480GB") == 4000 and table_peak("NVIDIA H200") == 4800
    assert table_peak("NVIDIA H100 PCIe") == 2000 and table_peak("NVIDIA H100 80GB HBM3") == 3350
    assert table_peak("NVIDIA L40S") == 864 and table_peak("NVIDIA L4") == 300
    assert table_peak("NVIDIA A100-SXM4-80GB") == 2039 and table_peak("Some New GPU") is None


def test_polled_probe_sees_a_child_process_memory():
    code = "import time; b = b'x' * (300 << 20); time.sleep(1.0)"  # 300 MiB, written so it is resident
    with Polled(torch.device("cpu"), interval=0.05) as mem:
        start = time.time()
        subprocess.run([sys.executable, "-c", code], check=True)
        end = time.time()
    assert 0.28 < mem.gib < 2.0, mem.gib
    assert mem.peak_between(start, end) == pytest.approx(mem.gib, rel=0.2)
    assert mem.peak_between(end + 100, end + 200) is None


@pytest.mark.launch
def test_one_process_without_torchrun_still_starts_a_process_group():
    """`python -m mcl_dist.bench.gpu_check` (no torchrun): a world of one, so part 1 still runs its
    collectives and the loss check through a real process group."""
    code = ("import torch.distributed as dist; from mcl_dist.bench.gpu_check import parse, start, part_collectives; "
            "a = parse(['--cpu-smoke']); device, waiter = start(a); out = part_collectives(a, device); "
            "dist.barrier(group=waiter); print(dist.get_world_size(), dist.get_backend(), out['ok'], "
            "out['allreduce_busbw_gbs']); dist.destroy_process_group()")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1", "gloo", "True", "None"]
