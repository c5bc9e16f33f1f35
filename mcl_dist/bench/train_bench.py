#!/usr/bin/env python
"""Stage-0 training throughput: our trainer vs `python -m open_clip_train.main`.

Both train the same model on the same synthetic shards with the same world size, global batch,
precision, local loss + gathered features and number of steps, launched with torchrun, in
alternation (rounds). samples/s is read from each trainer's own per-step log after a warm-up
and the median is reported. Ends with `ours/open_clip_train samples/s ratio: X`.

    python -m mcl_dist.bench.train_bench [--model tiny-vit] [--nproc 2] [--steps 40] [--batch 128] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile

import open_clip
import torch

from mcl_dist.core import layout
from mcl_dist.core.distributed import free_port
from mcl_dist.synthetic.trifeature import ensure_demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torchrun(nproc: int, args: list[str], env: dict, timeout: float | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """torchrun `args`; `check`: exit with the output on a non-zero status. A launch past
    `timeout` seconds is killed with its whole process group (torchrun's workers hold the GPU,
    and killing torchrun alone would leave them running) and raises TimeoutError."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    proc = subprocess.Popen(cmd + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise TimeoutError(f"{' '.join(args[:3])}: killed after {timeout:.0f} s (the check's deadline)\n"
                           f"{(out + err)[-3000:]}") from None
    done = subprocess.CompletedProcess(cmd + args, proc.returncode, out, err)
    if check and done.returncode:
        sys.exit(f"run failed: {' '.join(args[:3])}\n{out[-3000:]}\n{err[-5000:]}")
    return done


def model_args(model: str) -> tuple[str, str]:
    """(name, config file or '') for a shipped tiny config or an open_clip model name."""
    path = os.path.join(ROOT, "configs", "models", f"{model}.json")
    return (model, path) if os.path.exists(path) else (model, "")


def ours_args(a, shards: str, n: int, run_dir: str, extra: tuple = ()) -> list[str]:
    """launch/pretrain.py's arguments for a stage-0 run of `a.steps` steps (after the script)."""
    name, cfg_file = model_args(a.model)
    # demo.yaml names a config file, which would win over model.name: clear it for a named model
    model = [f"model.config_file={cfg_file}"] if cfg_file else [f"model.name={name}", "model.config_file="]
    return ["--config", os.path.join(ROOT, "configs/demo.yaml"), "--run-dir", run_dir,
            "data.synthetic=false", f"data.train_shards={shards}", f"data.num_samples={n}",
            f"data.workers={a.workers}", *model, f"train.global_batch_size={a.batch}",
            f"train.max_steps={a.steps}", "train.log_every=1", "train.checkpoint_every=100000",
            f"train.precision={a.precision}", "stages=[{}]", "eval.enabled=false",
            # the same optimisation as the open_clip_train command below (no clipping)
            "train.lr=1e-3", "train.wd=0.2", "train.warmup_steps=10", "train.grad_clip_norm=0", *extra]


def run_ours(a, shards: str, n: int, work: str, env: dict, extra: tuple = (), run_dir: str = "") -> list[float]:
    """Stage-0 samples/s after the warm-up; `extra` overrides are appended (mcl_dist/bench/gpu_check.py
    adds an MCL stage to the same run and reads it from `run_dir`)."""
    run_dir = run_dir or tempfile.mkdtemp(dir=work, prefix="ours-")
    torchrun(a.nproc, ["launch/pretrain.py", *ours_args(a, shards, n, run_dir, extra)], env)
    return stage_rates(run_dir, 0, a.warmup)


def stage_rates(run_dir: str, stage: int, warmup: int) -> list[float]:
    """samples/s of each logged step of a stage after the first `warmup` steps."""
    with open(layout.metrics_path(layout.stage_dir(run_dir, stage))) as f:
        rows = [json.loads(line) for line in f]
    return [r["samples_per_s"] for r in rows if r["step"] > warmup]


def run_open_clip(a, shards: str, n: int, work: str, env: dict) -> list[float]:
    name, cfg_file = model_args(a.model)
    logs = tempfile.mkdtemp(dir=work, prefix="oc-")
    per_gpu = a.batch // a.nproc
    epochs = max(1, -(-a.steps * a.batch // n))
    args = [os.path.abspath(__file__), "--as-open-clip-train", cfg_file, "--", "--train-data", shards,
            "--dataset-type", "webdataset", "--train-num-samples", str(a.steps * a.batch), "--batch-size", str(per_gpu),
            "--epochs", str(epochs), "--workers", str(a.workers), "--model", name, "--lr", "1e-3", "--warmup", "10",
            "--precision", a.precision if a.precision != "auto" else "fp32", "--local-loss", "--gather-with-grad",
            "--log-every-n-steps", "1", "--logs", logs, "--save-frequency", "0", "--report-to", "",
            "--seed", "0", "--device", "cpu" if a.device == "cpu" else "cuda"]
    proc = torchrun(a.nproc, args, env)
    # e.g. "Batch (t): 0.210, 609.3/s, 304.6/s/gpu"
    rates = [float(m) for m in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", proc.stdout + proc.stderr)]
    return rates[a.warmup:]


def _allow_cpu_ddp() -> None:
    """open_clip_train passes device_ids=[cpu] to DDP, which torch rejects; multi-process CPU
    training (gloo) needs device_ids=None. Nothing else of open_clip_train is changed."""
    base = torch.nn.parallel.DistributedDataParallel

    class CpuDDP(base):
        def __init__(self, module, device_ids=None, **kw):
            if device_ids and all(getattr(d, "type", d) == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids=device_ids, **kw)

    torch.nn.parallel.DistributedDataParallel = CpuDDP


def _skip_shard_end_markers() -> None:
    """webdataset 1.0.2 yields an empty dict at the end of every shard, which open_clip_train
    3.3.0's group_by_keys_nothrow indexes without a check (KeyError 'fname'); drop them."""
    import open_clip_train.data as ocd

    grouped = ocd.group_by_keys_nothrow

    def without_markers(data, *args, **kw):
        return grouped((d for d in data if d), *args, **kw)

    ocd.group_by_keys_nothrow = without_markers


def as_open_clip_train(argv: list[str]) -> None:
    """Entry used under torchrun: register the tiny config, then run open_clip_train."""
    cfg_file, rest = argv[0], argv[argv.index("--") + 1:]
    if cfg_file:
        open_clip.add_model_config(cfg_file)
    _allow_cpu_ddp()
    _skip_shard_end_markers()
    from open_clip_train.main import main

    main(rest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-vit")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="logged steps ignored at the start")
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--image-size", type=int, default=32)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench_train_")
    data = ensure_demo_data(os.path.join(work, "data"), n_train=a.samples, n_test=64, seed=0,
                            samples_per_shard=max(64, a.samples // 8))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if a.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // a.nproc)))
    ours, theirs = [], []
    for r in range(a.rounds):
        ours += run_ours(a, data["train"], a.samples, work, env)
        theirs += run_open_clip(a, data["train"], a.samples, work, env)
        print(f"round {r + 1}: ours {statistics.median(ours):.1f} samples/s, "
              f"open_clip_train {statistics.median(theirs):.1f} samples/s", flush=True)
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"model {a.model}, {a.nproc} ranks on {a.device}, global batch {a.batch}, {a.steps} steps x {a.rounds} rounds")
    print(f"ours:            {mo:.1f} samples/s (median of {len(ours)} steps)")
    print(f"open_clip_train: {mt:.1f} samples/s (median of {len(theirs)} steps)")
    print(f"ours/open_clip_train samples/s ratio: {mo / mt:.2f}")


def command() -> None:
    """`python -m mcl_dist.bench.train_bench`; under torchrun also the open_clip_train side (`--as-open-clip-train`)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--as-open-clip-train":
        as_open_clip_train(sys.argv[2:])
    else:
        main()


if __name__ == "__main__":
    command()
