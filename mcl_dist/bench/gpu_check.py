"""Does the GPU path work, and how fast is it? One command, about ten minutes, one table + JSON.

    torchrun --standalone --nproc_per_node 8 -m mcl_dist.bench.gpu_check [--out gpu_check.json]   # or python -m mcl_dist.bench.gpu_check
    torchrun --standalone --nproc_per_node 2 -m mcl_dist.bench.gpu_check --cpu-smoke              # the same code, tiny, on CPU (CI)

1. collectives, every rank: the process group (NCCL on GPU, gloo on CPU; started even for one
   process), all_gather and all_reduce values, all-reduce bus bandwidth, and the gathered
   label-masked CLIP loss (and its gradients) against the single-process loss on the
   concatenated batch.
2. train: our stage 0 vs open_clip_train on the same shards, GPUs, model (ViT-B-32, random
   init), global batch (256 per GPU), bf16 AMP, local loss + gathered features
   (mcl_dist/bench/train_bench.py's launches and shims), as a samples/s ratio.
3. stage 1 / stage 0: the same run of ours continues with embed -> k-means -> labels -> an MCL
   stage (cluster-bucketed sampler, indexed reads, masked loss); samples/s ratio.
4. embedding samples/s per GPU (the pipeline's embed step, decoding included, and the model
   alone) and k-means on a generated 2M x 512 fp16 matrix, ours vs faiss from the same init
   (mcl_dist/bench/kmeans_check.py), with the memory bandwidth reached.
5. peak memory of every part (GPU: torch's peak, or device-wide use for child processes;
   CPU: resident memory).

Parts 2-4 are child processes that rank 0 launches on this node's devices while the other ranks
wait on a gloo barrier (an NCCL barrier would keep a kernel spinning on their GPUs). The exit
status is 1 if a part failed or a correctness check did not hold; the targets are printed with
their verdicts (judged on GPU only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mcl_dist.bench import train_bench
from mcl_dist.bench.devtime import seconds_per_call
from mcl_dist.bench.gpu_report import finish, table
from mcl_dist.bench.memprobe import InProcess, Polled
from mcl_dist.clustering.embedding import encode
from mcl_dist.config.schema import ModelConfig
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core import layout
from mcl_dist.core.files import read_json, write_json
from mcl_dist.data.shards import count_samples, expand_urls
from mcl_dist.model.open_clip_models import create
from mcl_dist.objectives.loss import ClipLoss
from mcl_dist.synthetic.trifeature import shard_pattern, write_synthetic_shards

ROOT = train_bench.ROOT
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# sizes: steps (and the first `warmup` logged steps left out) per trainer, synthetic samples =
# epoch_steps global batches, stage 1's k and group_size, the k-means matrix, buffer sizes
GPU = dict(model="ViT-B-32", batch_per_gpu=256, steps=40, warmup=10, epoch_steps=32, k=32, group_size=32,
           kmeans_n=2_000_000, kmeans_d=512, kmeans_k=100, kmeans_iters=20, allreduce_mb=256, copy_mb=1024)
SMOKE = dict(model="tiny-vit", batch_per_gpu=16, steps=6, warmup=2, epoch_steps=8, k=4, group_size=8,
             kmeans_n=20_000, kmeans_d=32, kmeans_k=10, kmeans_iters=5, allreduce_mb=1, copy_mb=16)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="CPU, gloo, tiny sizes (CI)")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--work-dir", default="", help="data and runs (default: a temporary folder, removed)")
    p.add_argument("--shards", default="", help="train on these shards (brace pattern) instead of synthetic ones")
    p.add_argument("--samples", type=int, default=0, help="samples in --shards, or synthetic samples to make")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank (0: from the CPU count)")
    for key, value in GPU.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                       help=f"default {value} (--cpu-smoke: {SMOKE[key]})")
    a = p.parse_args(argv)
    for key, value in (SMOKE if a.cpu_smoke else GPU).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    return a


def cpus() -> int:
    """CPU cores this process may use (a SLURM allocation's, not the node's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# -- part 1: collectives and the gathered loss (every rank) -------------------------------------
def check_collectives(device: torch.device, nbytes: int) -> dict:
    w, r = dist.get_world_size(), dist.get_rank()
    mine = torch.full((2,), float(r), device=device)
    parts = [torch.empty_like(mine) for _ in range(w)]
    dist.all_gather(parts, mine)
    gathered = torch.cat(parts).cpu().tolist() == [float(i) for i in range(w) for _ in range(2)]
    total = torch.tensor([float(r + 1)], device=device)
    dist.all_reduce(total)
    reduced = float(total) == w * (w + 1) / 2
    buf = torch.ones(nbytes // 4, device=device)
    sec = seconds_per_call(lambda: dist.all_reduce(buf), device)
    # nccl-tests' bus bandwidth: what each link carries in a ring all-reduce
    busbw = 2 * (w - 1) / w * nbytes / sec / 1e9 if w > 1 else None
    return {"all_gather_ok": gathered, "all_reduce_ok": reduced, "allreduce_busbw_gbs": busbw,
            "allreduce_mb": nbytes / 2**20}


def check_loss(device: torch.device, per_rank: int = 8, dim: int = 32, tol: float = 1e-5) -> dict:
    """Each rank's share of one batch, gathered with gradient and masked by 3 labels, against the
    loss and gradients of one process on the whole batch (float32, the training dtype)."""

    w, r = dist.get_world_size(), dist.get_rank()
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(per_rank * w, dim, generator=g), dim=-1).to(device)
    txt = F.normalize(torch.randn(per_rank * w, dim, generator=g), dim=-1).to(device)
    labels = torch.randint(3, (per_rank * w,), generator=g).to(device)
    scale = torch.tensor(10.0, device=device)
    ref_img, ref_txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    ref = ClipLoss()(ref_img, ref_txt, scale, labels=labels)
    ref.backward()
    mine = slice(r * per_rank, (r + 1) * per_rank)
    my_img, my_txt = img[mine].clone().requires_grad_(), txt[mine].clone().requires_grad_()
    loss = ClipLoss()(my_img, my_txt, scale, labels=labels[mine], gather=True, gather_with_grad=True, local_loss=True)
    (loss / w).backward()  # the gather's backward sums every rank's share of the gradient
    mean = loss.detach().reshape(1).clone()
    dist.all_reduce(mean)
    grad = torch.stack([(my_img.grad - ref_img.grad[mine]).abs().max(), (my_txt.grad - ref_txt.grad[mine]).abs().max()])
    dist.all_reduce(grad, op=dist.ReduceOp.MAX)
    ref, mean = ref.item(), mean.item() / w
    loss_diff, grad_diff = abs(mean - ref), grad.max().item()
    return {"loss_gathered": mean, "loss_single": ref, "loss_abs_diff": loss_diff,
            "grad_max_abs_diff": grad_diff, "loss_tolerance": tol,
            "loss_equal": loss_diff <= tol * max(1.0, abs(ref)) and grad_diff <= tol}


def part_collectives(a, device: torch.device) -> dict:
    with InProcess(device) as mem:
        out = check_collectives(device, a.allreduce_mb << 20)
        out.update(check_loss(device))
    out["peak_mem_gb"] = max(dist_utils.all_gather_object(mem.gib))
    out["ok"] = bool(out["all_gather_ok"] and out["all_reduce_ok"] and out["loss_equal"])
    return out


# -- part 4a: the embedding model alone (every rank, its own device) ----------------------------
def part_embed_model(a, device: torch.device, reps: int = 5) -> dict:
    name, config_file = train_bench.model_args(a.model)
    bundle = create(ModelConfig(name=name, config_file=config_file), device, pretrained="")
    model = bundle["model"].eval()
    size = getattr(model.visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    images = torch.randn(a.batch_per_gpu, 3, *size, device=device)
    with InProcess(device) as mem:
        rate = a.batch_per_gpu / seconds_per_call(partial(encode, model, {"image": images}, "image", device), device,
                                                  reps)
    del model, bundle, images  # free the GPU for the parts that follow
    rates = dist_utils.all_gather_object((rate, mem.gib))
    return {"model_samples_per_s_per_gpu": statistics.mean(r for r, _ in rates),
            "model_peak_mem_gb": max(m for _, m in rates)}


# -- parts 2-4: child processes launched by rank 0 ------------------------------------------------
def child_env(cpu: bool, nproc: int) -> dict:
    """Our environment without the outer torchrun's variables (a child torchrun sets its own)."""
    env = {k: v for k, v in os.environ.items()
           if k not in TORCHRUN_ENV and not k.startswith(("TORCHELASTIC_", "PET_"))}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])))
    if cpu:  # more OpenMP threads than cores make gloo ranks spin against each other (10x slower)
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(max(1, cpus() // nproc)))
    return env


def _write_part(job: tuple) -> str:
    out_dir, n, per_shard, seed = job
    return shard_pattern(write_synthetic_shards(out_dir, n_samples=n, samples_per_shard=per_shard, seed=seed,
                                                progress=False))


def prepare_data(a, work: str, nproc: int) -> tuple[str, int]:
    """(shard pattern, samples): the given shards, or synthetic ones, `epoch_steps` optimizer steps
    per epoch, with two shards for every worker of every rank. Written by one process per CPU core
    (a folder and seed each, so keys never collide) and joined with '::'."""
    if a.shards:
        if not a.samples:
            a.samples = count_samples(expand_urls(a.shards))
        return a.shards, a.samples

    n, shards = a.samples or a.epoch_steps * a.batch_per_gpu * nproc, 2 * nproc * a.workers
    jobs = max(1, min(shards, cpus()))
    shards_per_job = -(-shards // jobs)
    per_shard = max(1, -(-n // (jobs * shards_per_job)))
    todo = [(os.path.join(work, "data", f"job{j}"), shards_per_job * per_shard, per_shard, j) for j in range(jobs)]
    # fork: the children only draw and encode images, and spawning would re-import torch in each
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        patterns = list(pool.map(_write_part, todo))
    return "::".join(patterns), jobs * shards_per_job * per_shard


def part_kmeans(a, device: torch.device, work: str, env: dict) -> dict:
    args = {"n": a.kmeans_n, "d": a.kmeans_d, "k": a.kmeans_k, "iters": a.kmeans_iters, "device": str(device),
            "copy_bytes": a.copy_mb << 20}
    out = os.path.join(work, "kmeans_check.json")
    proc = subprocess.run([sys.executable, "-m", "mcl_dist.bench.kmeans_check", "--args", json.dumps(args),
                           "--out", out],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise RuntimeError(f"mcl_dist.bench.kmeans_check failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return read_json(out)


def step_window(run_dir: str, step: str) -> tuple[float, float]:
    rec = read_json(layout.manifest_path(run_dir))["steps"][step]
    return rec["started_at"], rec["finished_at"]


def part_train(a, device: torch.device, work: str, env: dict, nproc: int, shards: str, n: int) -> dict:
    """Parts 2, 3 and the pipeline's embedding rate: open_clip_train, then ours (stage 0 -> embed ->
    k-means -> labels -> stage 1) on the same shards and devices."""
    bt = train_bench
    ns = argparse.Namespace(model=a.model, nproc=nproc, steps=a.steps, warmup=a.warmup, batch=a.batch_per_gpu * nproc,
                            workers=a.workers, precision="fp32" if device.type == "cpu" else "amp_bf16",
                            device=device.type)
    with Polled(device) as theirs_mem:
        theirs = bt.run_open_clip(ns, shards, n, work, env)
    run_dir = os.path.join(work, "ours")
    extra = (f"stages=[{{}}, {{k: {a.k}, group_size: {a.group_size}}}]", f"cluster.embed_batch_size={a.batch_per_gpu}")
    with Polled(device) as ours_mem:
        ours = bt.run_ours(ns, shards, n, work, env, extra=extra, run_dir=run_dir)
    stage1 = bt.stage_rates(run_dir, 1, a.warmup)
    embed = read_json(layout.embed_stats_path(run_dir, 1))
    o, t, s1 = statistics.median(ours), statistics.median(theirs), statistics.median(stage1)
    common = {"model": a.model, "global_batch": ns.batch, "steps": a.steps, "warmup_steps": a.warmup,
              "precision": ns.precision, "samples": n}
    return {
        "train": {**common, "ours_samples_per_s": o, "open_clip_samples_per_s": t, "ratio": o / t,
                  "ours_peak_mem_gb": ours_mem.peak_between(*step_window(run_dir, layout.step_name("train", 0))),
                  "open_clip_peak_mem_gb": theirs_mem.gib},
        "stage1": {**common, "k": a.k, "group_size": a.group_size, "stage0_samples_per_s": o,
                   "stage1_samples_per_s": s1, "ratio": s1 / o,
                   "peak_mem_gb": ours_mem.peak_between(*step_window(run_dir, layout.step_name("train", 1)))},
        "embed": {"pipeline_samples_per_s_per_gpu": embed["samples_per_s"] / nproc, "pipeline_samples": embed["samples"],
                  "pipeline_peak_mem_gb": ours_mem.peak_between(*step_window(run_dir, layout.step_name("embed", 1)))},
    }


def guarded(result: dict, part: str, fn, default=None):
    """Run one part (timed); a failure is recorded (and printed) instead of ending the check."""
    t = time.perf_counter()
    try:
        return fn()
    except (Exception, SystemExit) as e:  # train_bench's launches sys.exit() with the child's output
        text = str(e) if isinstance(e, SystemExit) else "".join(traceback.format_exception_only(type(e), e)).strip()
        result["errors"].append(f"{part}: {text[-3000:]}")
        print(f"error: gpu_check part '{part}' failed: {text[-3000:]}", file=sys.stderr, flush=True)
        return default
    finally:
        result["part_seconds"][part] = round(time.perf_counter() - t, 1)


# -- main ------------------------------------------------------------------------------------------
def start(a) -> tuple[torch.device, object]:
    """The process group (also for one process, so that NCCL is always exercised) and a gloo
    group for waiting while rank 0 runs the child processes."""
    if not a.cpu_smoke and not torch.cuda.is_available():
        sys.exit("error: gpu_check: no CUDA device is visible; run with --cpu-smoke for the CPU check")
    info = dist_utils.init_distributed(device="cpu" if a.cpu_smoke else "cuda")
    dist_utils.ensure_process_group(info.device)  # a world of one (torchrun with 1 process, or plain python)
    return info.device, dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=2))


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.time()
    device, waiter = start(a)
    nproc = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    a.workers = a.workers or (1 if a.cpu_smoke else max(1, min(8, cpus() // nproc - 1)))
    result = {"mode": "cpu-smoke" if a.cpu_smoke else "gpu", "world_size": dist.get_world_size(), "nproc_per_node": nproc,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "backend": dist.get_backend(), "torch": torch.__version__, "targets_judged": not a.cpu_smoke,
              "errors": [], "part_seconds": {}}
    result["collectives"] = guarded(result, "collectives", lambda: part_collectives(a, device))
    result["embed"] = guarded(result, "embed (model)", lambda: part_embed_model(a, device)) or {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if dist.get_rank() == 0:
        work = a.work_dir or tempfile.mkdtemp(prefix="gpu_check_")
        env = child_env(device.type == "cpu", nproc)
        result["kmeans"] = guarded(result, "kmeans", lambda: part_kmeans(a, device, work, env))
        data = guarded(result, "data", lambda: prepare_data(a, work, nproc))
        if data:
            parts = guarded(result, "train", lambda: part_train(a, device, work, env, nproc, *data)) or {}
            result.update(train=parts.get("train"), stage1=parts.get("stage1"))
            result["embed"].update(parts.get("embed") or {})
        if not a.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    dist.barrier(group=waiter)
    if dist.get_rank() != 0:
        return 0
    result["seconds"] = time.time() - t0
    finish(result)
    write_json(result, a.out)
    print(table(result), flush=True)
    print(f"wrote {os.path.abspath(a.out)}", flush=True)
    return 0 if result["ok"] else 1


def command() -> int:
    """`mcl-gpu-check`: main(), then the process group is torn down."""
    code = main()
    dist_utils.destroy()
    return code


if __name__ == "__main__":
    sys.exit(command())
