#!/usr/bin/env python
"""Training-engine throughput and memory: DDP vs DeepSpeed ZeRO-1/2 (and 3) on the same model.

Every engine trains the same model (seed 0) on the same fixed random batch with the trainer's
loss (CLIP InfoNCE, local loss + features gathered with gradient), under torchrun with the same
world size, global batch and precision, so the numbers isolate the engine: no data loading.
Engines run in alternation (rounds); samples/s is timed over the steps after a warm-up (median
over rounds). Peak memory per rank: on GPU `torch.cuda.max_memory_allocated`; on CPU the peak
resident set (`resource.getrusage(...).ru_maxrss`) and, in brackets, its growth from just before
the engine was built (what the engine and training added to the process's imports and model).

    python tools/bench_engines.py [--model tiny-vit] [--nproc 2] [--steps 20] [--batch 64]
        [--engines ddp,zero1,zero2] [--rounds 2] [--precision auto]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from mcl_dist.core.distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENGINES = {"ddp": ("ddp", 0), "zero0": ("deepspeed", 0), "zero1": ("deepspeed", 1), "zero2": ("deepspeed", 2),
           "zero3": ("deepspeed", 3)}


def model_config(model: str):
    from mcl_dist.config.schema import ModelConfig

    path = os.path.join(ROOT, "configs", "models", f"{model}.json")
    return ModelConfig(config_file=path) if os.path.exists(path) else ModelConfig(name=model)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(a) -> None:
    import torch

    from mcl_dist.config.schema import TrainConfig
    from mcl_dist.core import distributed as dist_utils
    from mcl_dist.model.open_clip_models import create
    from mcl_dist.objectives.loss import ClipLoss
    from mcl_dist.training.engine import build_engine

    info = dist_utils.init_distributed()
    cuda = info.device.type == "cuda"
    torch.manual_seed(0)
    bundle = create(model_config(a.model), info.device, pretrained="")
    model = bundle["model"]
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    micro = a.batch // info.world_size
    g = torch.Generator().manual_seed(info.rank)
    images = torch.randn(micro, 3, size, size, generator=g).to(info.device)
    texts = torch.randint(1, model.vocab_size, (micro, model.context_length), generator=g).to(info.device)
    name, zero = ENGINES[a.engine]
    tcfg = TrainConfig(global_batch_size=a.batch, lr=1e-4, warmup_steps=1, engine=name, zero_stage=zero,
                       precision=a.precision)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb()
    engine = build_engine(model, tcfg, info.device, total_steps=10 ** 6, base_lr=tcfg.lr)
    loss_fn = ClipLoss()
    t0 = 0.0
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            if cuda:
                torch.cuda.synchronize()
            dist_utils.barrier()
            t0 = time.perf_counter()
        with engine.accumulating(last=True):
            out = engine.forward(image=images, text=texts)
            loss = loss_fn(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
                           gather=True, gather_with_grad=True, local_loss=True)
            engine.backward(loss)
        engine.step()
    if cuda:
        torch.cuda.synchronize()
    dist_utils.barrier()
    elapsed = time.perf_counter() - t0
    mine = {"rank": info.rank, "peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else _rss_mb(),
            "growth_mb": None if cuda else _rss_mb() - rss_before, "loss": float(loss)}
    ranks = dist_utils.all_gather_object(mine)
    if info.is_main:
        params = sum(p.numel() for p in bundle["model"].parameters())
        print("BENCH " + json.dumps({"engine": a.engine, "samples_per_s": a.steps * a.batch / elapsed,
                                     "params": params, "device": info.device.type, "ranks": ranks}), flush=True)
    dist_utils.destroy()


def run_one(a, engine: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={a.nproc}",
           f"--master_port={free_port()}", os.path.abspath(__file__), "--worker", "--engine", engine,
           "--model", a.model, "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
           "--precision", a.precision]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if a.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or not lines:
        sys.exit(f"{engine} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][6:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-vit", help="configs/models/<name>.json or an open_clip model name")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--engines", default="ddp,zero1,zero2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="ddp", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    engines = a.engines.split(",")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        sys.exit(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    results: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(a.rounds):
        for e in engines:
            results[e].append(run_one(a, e))
            print(f"round {r + 1}/{a.rounds} {e}: {results[e][-1]['samples_per_s']:.1f} samples/s", file=sys.stderr)
    first = results[engines[0]][0]
    print(f"\nmodel {a.model} ({first['params'] / 1e6:.2f}M params), {a.nproc} ranks on {first['device']}, global batch "
          f"{a.batch}, precision {a.precision}, {a.steps} timed steps after {a.warmup}, median of {a.rounds} rounds\n")
    mem_head = "peak GPU memory per rank (MiB)" if first["device"] == "cuda" else \
        "peak RSS per rank, MiB (growth from engine build)"
    print(f"| engine | samples/s | vs ddp | {mem_head} |")
    print("| --- | ---: | ---: | --- |")
    base = statistics.median(x["samples_per_s"] for x in results[engines[0]])
    for e in engines:
        sps = statistics.median(x["samples_per_s"] for x in results[e])
        last = results[e][-1]["ranks"]
        if first["device"] == "cuda":
            mem = ", ".join(f"{r['peak_mb']:.0f}" for r in last)
        else:
            mem = ", ".join(f"{r['peak_mb']:.0f} (+{r['growth_mb']:.0f})" for r in last)
        print(f"| {e} | {sps:.1f} | {sps / base:.2f}x | {mem} |")


if __name__ == "__main__":
    main()
