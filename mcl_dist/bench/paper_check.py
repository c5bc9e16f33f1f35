"""The paper's run, measured: every GPU figure of issue 21 in one command (< 8 minutes on one
H200), one JSON and one table.

    python -m mcl_dist.bench.paper_check --out paper_check.json --table paper_check.md    # one GPU
    python -m mcl_dist.bench.paper_check --cpu-smoke --out smoke.json                     # CI: CPU, tiny

Parts (each timed; a failing part is recorded in `errors` and the rest still run):
1. ceilings: the device's bf16 matmul rate and device-to-device copy bandwidth, measured here.
2. data: photo-like JPEG shards, 256 px short side (training and embedding) and 512 px.
3. loader: decode + transform samples/s on one core (256 and 512 px) and with `workers`
   DataLoader workers; workers per GPU needed for each trainer's measured rate and the anchors.
4. train, per recipe (ViT-B-32 and the paper's ViT-L-14: lock-text, lock-image with 6 unlocked
   groups, QuickGELU, random init, bf16 AMP): the model-only ceiling, the FLOPs per sample
   counted as the step runs, peak memory, then alternating rounds ours / open_clip_train
   (throughput.py's method): samples/s, ratio min/median/max, data-wait share, MFU.
   The paper's 1,000 per GPU is tried first; on out-of-memory the batch is halved (reported).
   The ViT-L-14 recipe in fp16 AMP (the paper's `--precision amp`) runs last, if the time
   budget leaves room.
5. embed: encode_image samples/s in fp32 and bf16 autocast (model only) and the pipeline's
   embed step (bf16, JPEG decoding included), per model.
6. kmeans: the pipeline's path (host fp16, spherical) at 10M x 768, K 10 and 1,000, vs faiss from
   the same init (kmeans_scale.py).
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from mcl_dist import distributed as dist_utils
from mcl_dist.bench import kmeans_scale, loader_rate, train_bench
from mcl_dist.bench.devtime import seconds_per_call
from mcl_dist.bench.flops import mfu, peak_tflops
from mcl_dist.bench.gpu_check import guarded
from mcl_dist.bench.jpeg_shards import pattern, write_jpeg_shards
from mcl_dist.bench.memprobe import Polled
from mcl_dist.bench.paper_table import table
from mcl_dist.bench.throughput import ModelOnly, Recipe, rounds
from mcl_dist.config import ModelConfig
from mcl_dist.data.shards import expand_urls
from mcl_dist.embed import embed_shards, encode
from mcl_dist.files import write_json, write_text
from mcl_dist.models import create

LOCKS = dict(lock_image=True, lock_text=True, quick_gelu=True)  # + lock_image_unlocked_groups from the sizes
GPU = dict(recipes=[("vit_l14_paper", "ViT-L-14", 1000, "amp_bf16"), ("vit_b32", "ViT-B-32", 256, "amp_bf16")],
           late_recipes=[("vit_l14_paper_fp16", "ViT-L-14", 1000, "amp")], steps=10, warmup=3, rounds=3, unlocked_groups=6, jpeg256=16_000, jpeg512=1_000, per_shard=500,
           loader_samples=1_000, loader_batch=64, embed_models=["ViT-B-32", "ViT-L-14"], embed_batch=512,
           kmeans_n=10_000_000, kmeans_d=768, kmeans_k=[10, 1000], kmeans_iters=20, faiss_rows=1_000_000, faiss_iters=2)
SMOKE = dict(recipes=[("tiny_locked", "tiny-vit", 8, "fp32")], late_recipes=[], steps=6, warmup=2, rounds=1, unlocked_groups=2,
             jpeg256=48, jpeg512=24, per_shard=24, loader_samples=32, loader_batch=8, embed_models=["tiny-vit"],
             embed_batch=8, kmeans_n=5_000, kmeans_d=32, kmeans_k=[4, 16], kmeans_iters=3, faiss_rows=0, faiss_iters=0)
ANCHORS = {"ViT-B-32 LAION A100": 630.0, "ViT-L-14 LAION A100": 79.0, "ViT-L-14 DataComp A100": 86.0}


OPTIONS = [  # (flag, default, help); the sizes themselves are GPU / SMOKE above
    ("--out", "paper_check.json", "the JSON (written atomically)"),
    ("--table", "", "also write the table here (markdown)"),
    ("--work-dir", "", "keep data and runs here (default: a temporary folder, removed)"),
    ("--workers", 0, "loader workers per GPU (0: CPU cores - 1, at most 15)"),
    ("--parts", "ceilings,data,loader,train,embed,kmeans", "which parts to run (data always runs)"),
    ("--budget-s", -1.0, "start no part after this many seconds; skipped parts are listed (default: 420 on a "
                         "GPU, none for --cpu-smoke)"),
]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="CPU, tiny sizes, one round (CI)")
    for flag, default, text in OPTIONS:
        p.add_argument(flag, type=type(default), default=default, help=text)
    return p.parse_args(argv)


def _config_file(model: str) -> str:
    return train_bench.model_args(model)[1]


def part_ceilings(dev: torch.device, smoke: bool) -> dict:
    """A matmul in the trainers' dtype (bf16 on GPU; fp32 on the CPU smoke) and a device copy."""
    n, dtype = (512, torch.float32) if smoke else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    out = {"matmul_tflops": 2 * n**3 / seconds_per_call(lambda: a @ b, dev, 3 if smoke else 20) / 1e12,
           "matmul_dtype": str(dtype).replace("torch.", ""), "copy_gbs": kmeans_scale.device_copy_gbs(dev)}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out["peak_bf16_tflops_datasheet"] = peak_tflops(name)
    return out


def part_data(c: dict, work: str) -> dict:
    with ProcessPoolExecutor(max(1, (os.cpu_count() or 2) - 1)) as pool:
        s256 = write_jpeg_shards(os.path.join(work, "jpeg256"), n_samples=c["jpeg256"], short_side=256,
                                 samples_per_shard=c["per_shard"], pool=pool)
        s512 = write_jpeg_shards(os.path.join(work, "jpeg512"), n_samples=c["jpeg512"], short_side=512,
                                 samples_per_shard=c["per_shard"], pool=pool)
    kb = lambda paths, n: sum(os.path.getsize(p) for p in paths) / n / 1000  # noqa: E731
    return {"jpeg256": pattern(s256), "jpeg256_samples": c["jpeg256"], "jpeg256_kb": kb(s256, c["jpeg256"]),
            "jpeg512": pattern(s512), "jpeg512_samples": c["jpeg512"], "jpeg512_kb": kb(s512, c["jpeg512"])}


def part_loader(c: dict, data: dict, workers: int) -> dict:
    out = {}
    for size in ("jpeg256", "jpeg512"):
        out[f"{size}_per_core"] = loader_rate.rate(data[size], "ViT-B-32", batch=c["loader_batch"],
                                                   max_samples=c["loader_samples"])["samples_per_s"]
    out["jpeg256_workers"] = workers
    out["jpeg256_all_workers"] = loader_rate.rate(data["jpeg256"], "ViT-B-32", workers=workers, batch=c["loader_batch"],
                                                  warmup_batches=workers + 1)["samples_per_s"]
    out["workers_needed_anchors"] = {k: loader_rate.workers_needed(v, out["jpeg256_per_core"]) for k, v in ANCHORS.items()}
    return out


def _model_only(r: Recipe, dev: torch.device) -> tuple[Recipe, dict]:
    """Ceiling, FLOPs and peak memory; the batch is halved until a step fits."""
    while True:
        try:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            mo = ModelOnly(r, dev, _config_file(r.model))
            rate = mo.rate(steps=max(3, r.steps // 2))
            out = {"batch_per_gpu": r.batch_per_gpu, "model_only_samples_per_s": rate, "flops": mo.flops(),
                   "model_only_peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
            del mo
            gc.collect()  # the trainers that follow need the device memory back
            return r, out
        except torch.OutOfMemoryError:
            if r.batch_per_gpu <= 16:
                raise
            r = Recipe(**{**r.__dict__, "batch_per_gpu": r.batch_per_gpu // 2})
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def part_train(c: dict, model: str, batch: int, precision: str, data: dict, work: str, dev: torch.device,
               workers: int, peak: tuple) -> dict:
    """`peak`: (data-sheet TFLOP/s or None, measured matmul TFLOP/s or None) for the MFUs."""
    r = Recipe(model=model, batch_per_gpu=batch, precision=precision, steps=c["steps"], warmup=c["warmup"],
               workers=workers, nproc=1, device=dev.type, lock_image_unlocked_groups=c["unlocked_groups"], **LOCKS)
    r, out = _model_only(r, dev)
    out["batch_note"] = "the paper's per-GPU batch" if r.batch_per_gpu == batch else f"{batch} did not fit; halved"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dev.type == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) - 1)))
    probe = None
    if dev.type == "cuda":
        probe = lambda: Polled(dev)  # noqa: E731  (trainers are child processes: device-wide use)
    out.update(rounds(r, data["jpeg256"], data["jpeg256_samples"], work, env, c["rounds"], peak=probe))
    per_sample = out["flops"]["per_sample"]
    for key, tflops in (("mfu", peak[0]), ("mfu_of_measured_matmul", peak[1])):
        if tflops:
            for arm in ("ours", "open_clip_train"):
                out[arm][key] = [mfu(x, per_sample, tflops * 1e12) for x in out[arm]["samples_per_s"]]
            out[f"model_only_{key}"] = mfu(out["model_only_samples_per_s"], per_sample, tflops * 1e12)
    return out


def part_embed(c: dict, data: dict, work: str, dev: torch.device, workers: int) -> dict:
    out = {}
    for model in c["embed_models"]:
        bundle = create(ModelConfig(name=model, config_file=_config_file(model)), dev)
        net = bundle["model"].eval()
        size = net.visual.image_size[0]
        images = {"image": torch.randn(c["embed_batch"], 3, size, size, device=dev)}
        row = {}
        for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            sec = seconds_per_call(lambda: encode(net, images, "image", dev, dtype), dev, 3 if dev.type == "cpu" else 10)
            row[f"model_{label}_samples_per_s"] = c["embed_batch"] / sec
        out_dir = tempfile.mkdtemp(dir=work, prefix="embed-")
        stats = embed_shards(net, bundle, expand_urls(data["jpeg256"]), out_dir, batch_size=c["embed_batch"],
                             workers=workers, precision="bf16")
        row.update(pipeline_bf16_samples_per_s=stats["samples_per_s"], pipeline_samples=stats["samples"])
        row["pipeline_over_model_bf16"] = row["pipeline_bf16_samples_per_s"] / row["model_bf16_samples_per_s"]
        out[model] = row
        del net, bundle, images
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def part_kmeans(c: dict, dev: torch.device) -> dict:
    x = kmeans_scale.embeddings(c["kmeans_n"], c["kmeans_d"], 0, dev)
    return {f"k{k}": kmeans_scale.run(0, 0, k, c["kmeans_iters"], dev.type, faiss_rows=c["faiss_rows"],
                                      faiss_iters=c["faiss_iters"], x=x) for k in c["kmeans_k"]}


def timed_part(result: dict, part: str, fn):
    """gpu_check's guard (a failing part is recorded in `errors`, its seconds in `part_seconds`),
    plus a progress line."""
    out = guarded(result, part, fn)
    print(f"paper_check: {part} done in {result['part_seconds'][part]} s", file=sys.stderr, flush=True)
    return out


def plan(a, c: dict, result: dict, work: str, dev: torch.device, workers: int) -> list:
    """(part, thunk) in priority order: the paper recipe first, what is cheap or known last."""
    parts = set(a.parts.split(",")) | {"data"}
    data = lambda: result.get("data") or {}  # noqa: E731  (filled by the first part)

    def peak() -> tuple:
        ceil = result.get("ceilings") or {}
        return ceil.get("peak_bf16_tflops_datasheet"), ceil.get("matmul_tflops")

    steps = [("ceilings", lambda: part_ceilings(dev, a.cpu_smoke)), ("data", lambda: part_data(c, work)),
             ("loader", lambda: part_loader(c, data(), workers))]
    def train(recipes: list) -> list:
        return [(f"train {name}", lambda spec=spec: part_train(c, *spec, data(), work, dev, workers, peak()))
                for name, *spec in recipes]

    steps += train(c["recipes"])
    steps += [("kmeans", lambda: part_kmeans(c, dev)), ("embed", lambda: part_embed(c, data(), work, dev, workers))]
    steps += train(c["late_recipes"])  # the paper's own fp16 AMP, when the budget leaves time
    return [(p, fn) for p, fn in steps if p.split(" ")[0] in parts]


def main(argv=None) -> int:
    a = parse(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        sys.exit("error: paper_check: no CUDA device is visible; run with --cpu-smoke for the CPU check")
    c, t0 = (SMOKE if a.cpu_smoke else GPU), time.time()
    dev = dist_utils.init_distributed(device="cpu" if a.cpu_smoke else "cuda").device
    if dev.type == "cpu":  # as many threads as the trainer children get (OMP_NUM_THREADS): 2 would spin on 2 cores
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    budget = a.budget_s if a.budget_s >= 0 else (float("inf") if a.cpu_smoke else 420.0)
    workers = a.workers or (1 if a.cpu_smoke else 8)  # the setting: 8 loader workers per GPU
    result = {"mode": "cpu-smoke" if a.cpu_smoke else "gpu", "torch": torch.__version__, "cpu_cores": os.cpu_count(),
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "workers": workers,
              "errors": [], "skipped": [], "part_seconds": {}, "train": {}}
    work = a.work_dir or tempfile.mkdtemp(prefix="paper_check_")
    try:
        for part, fn in plan(a, c, result, work, dev, workers):
            if time.time() - t0 > budget:  # keep the lease: later parts are named, not run
                result["skipped"].append(part)
                continue
            value = timed_part(result, part, fn)
            if part.startswith("train "):
                result["train"][part[6:]] = value
            else:
                result[part] = value
            write_json({**result, "seconds": time.time() - t0}, a.out)  # a killed run still leaves its parts
    finally:
        if not a.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.time() - t0
    write_json(result, a.out)
    text = table(result)
    if a.table:
        write_text(text + "\n", a.table)
    print(text, flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
