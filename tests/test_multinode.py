"""Two "nodes" on localhost: two torchrun launchers meeting through c10d rendezvous.

This is what `launch/slurm/multi_node.sbatch` does across real hosts (one torchrun per node,
`--rdzv_backend c10d --rdzv_endpoint <first node>:PORT`), here with one process per node and the
run directory standing in for shared storage.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port, tiny_config


def launcher(port: int, cfg: str, run_dir: str, log_path: str, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "mcl-test",
           "--max_restarts", "0", "launch/pretrain.py", "--config", cfg, "--run-dir", run_dir, *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


@pytest.mark.launch
def test_two_node_c10d_rendezvous_trains_and_checkpoints(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards)
    run_dir = str(tmp_path / "run")
    port = free_port()
    overrides = ["train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1"]
    nodes = [launcher(port, cfg, run_dir, str(tmp_path / f"node{i}.log"), *overrides) for i in range(2)]
    try:
        codes = [p.wait(timeout=240) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-4000:] for log in logs)
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    train = manifest["steps"]["stage_0/train"]
    assert train["status"] == "done"
    assert train["settings"]["world_size"] == 2  # one rank from each launcher
    assert "world size 2" in "".join(logs)
    stage = os.path.join(run_dir, "stage_0")
    assert os.path.exists(os.path.join(stage, "checkpoint.pt"))
    assert sorted(os.listdir(os.path.join(stage, "checkpoints"))) == ["step_00000002.pt", "step_00000004.pt"]
    with open(os.path.join(stage, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]
