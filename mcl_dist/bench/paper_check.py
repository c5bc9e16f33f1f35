"""The paper's run, measured on one GPU: every GPU figure in one command, one JSON and one table,
scheduled against a deadline so that one device window gives as many rows as it can hold.

    python -m mcl_dist.bench.paper_check --out paper_check.json --table paper_check.md    # one GPU
    python -m mcl_dist.bench.paper_check --resume paper_check.json --out paper_check2.json  # the rest
    python -m mcl_dist.bench.paper_check --cpu-smoke --out smoke.json                     # CI: CPU, tiny

Parts, in this order (EXPECTED_S gives each one's expected seconds on one H100/H200):
0. preflight (~20 s): versions (python, torch and its CUDA, the driver, open_clip, open_clip_train,
   webdataset, faiss) and one tiny training step on the device. If it fails nothing else runs.
1. ceilings: the device's bf16 matmul rate and device-to-device copy bandwidth, measured here.
2. data: photo-like JPEG shards, 256 px short side (training and embedding) and 512 px.
3. loader: decode + transform samples/s on one core (256 and 512 px) and with `workers`
   DataLoader workers; workers per GPU needed for the anchors.
4. train, the paper's ViT-L-14 recipe (lock-text, lock-image with 6 unlocked groups, QuickGELU,
   random init, bf16 AMP, 1,000 per GPU): the model-only ceiling, FLOPs per sample counted as the
   step runs, peak memory, then alternating rounds ours / open_clip_train (throughput.py's method:
   equal step counts, both asserted; a multiple of the workers): samples/s, ratio
   min/median/max, data-wait share, MFU. On any allocation failure the batch is halved (reported).
5. kmeans: the pipeline's path (host fp16, spherical) at 10M x 768, K 10 and 1,000, against the
   best peer on the same device (faiss-gpu where importable, and a plain-torch Lloyd always),
   from the same init; GB/s as the bytes our kernels move.
6. train, ViT-B-32 with the same locks at 256 per GPU (at least 3 loader waves timed per round).
7. embed: encode_image samples/s in fp32 and bf16 autocast (model only) and the pipeline's embed
   step (bf16, JPEG decoding included), per model.
8. train, the ViT-L-14 recipe in fp16 AMP (the paper's `--precision amp`).

Deadline: a part starts only if its expected time fits in what is left of `--deadline-s`; the
others are listed as skipped with the time they needed, and a child launch is killed at the
deadline (so the command's own limit never cuts a part mid-way). The JSON and the table are
rewritten atomically after every part. `--resume FILE` keeps the parts FILE already holds and
runs the rest (the data are made again where a part needs them).
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch

from mcl_dist.bench import kmeans_check, kmeans_scale, loader_rate, train_bench
from mcl_dist.bench.devtime import seconds_per_call
from mcl_dist.bench.flops import mfu, peak_tflops
from mcl_dist.bench.gpu_check import guarded
from mcl_dist.bench.jpeg_shards import pattern, write_jpeg_shards
from mcl_dist.bench.memprobe import Polled
from mcl_dist.bench.paper_table import table
from mcl_dist.bench.throughput import MIN_BATCH, ModelOnly, Recipe, is_alloc_failure, rounds
from mcl_dist.clustering.embedding import embed_shards, encode
from mcl_dist.clustering.kmeans import kmeans
from mcl_dist.config.schema import ModelConfig
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core.files import read_json, write_json, write_text
from mcl_dist.data.shards import expand_urls
from mcl_dist.model.open_clip_models import create

LOCKS = dict(lock_image=True, lock_text=True, quick_gelu=True)  # + lock_image_unlocked_groups from the sizes
# recipes: (name, model, per-GPU batch, precision, warm-up waves, timed waves); a wave is one batch
# per loader worker, so steps = waves x workers (open_clip_train's epoch is whole waves)
GPU = dict(recipes={"vit_l14_paper": ("ViT-L-14", 1000, "amp_bf16", 1, 1), "vit_b32": ("ViT-B-32", 256, "amp_bf16", 1, 3),
                    "vit_l14_paper_fp16": ("ViT-L-14", 1000, "amp", 1, 1)},
           rounds=3, unlocked_groups=6, jpeg256=16_000, jpeg512=1_000, per_shard=500,
           loader_samples=500, loader_batch=64, loader_all_samples=8_000, embed_models=["ViT-B-32", "ViT-L-14"],
           embed_batch=512, kmeans_n=10_000_000, kmeans_d=768, kmeans_k=[10, 1000], kmeans_iters=20)
SMOKE = dict(recipes={"tiny_locked": ("tiny-vit", 8, "fp32", 1, 2)}, rounds=1, unlocked_groups=2,
             jpeg256=48, jpeg512=24, per_shard=24, loader_samples=32, loader_batch=8, loader_all_samples=0,
             embed_models=["tiny-vit"], embed_batch=8, kmeans_n=5_000, kmeans_d=32, kmeans_k=[4, 16], kmeans_iters=3)
ANCHORS = {"ViT-B-32 LAION A100": 630.0, "ViT-L-14 LAION A100": 79.0, "ViT-L-14 DataComp A100": 86.0}
# the order parts run in: the paper's recipe first, k-means before ViT-B-32 (its peer matters
# more than a second model's ratio), fp16 last
ORDER = ["preflight", "ceilings", "data", "loader", "train vit_l14_paper", "kmeans", "train vit_b32", "embed",
         "train vit_l14_paper_fp16", "train tiny_locked"]
# expected seconds per part on one H100 / H200 with 16 cores (estimates from the parts' sizes: a
# trainer launch ~12 s + its steps, ViT-L-14 recipe ~1 s a step at 1,000; to be replaced by the
# part_seconds of the first GPU run); the CPU smoke's are what it takes on 2 busy cores
EXPECTED_S = {"gpu": {"preflight": 20, "ceilings": 10, "data": 25, "loader": 20, "train vit_l14_paper": 190,
                      "kmeans": 60, "train vit_b32": 100, "embed": 40, "train vit_l14_paper_fp16": 190},
              "cpu-smoke": {"preflight": 10, "ceilings": 5, "data": 10, "loader": 10, "train tiny_locked": 60,
                            "kmeans": 10, "embed": 20}}
DEADLINE_S = 270.0  # one device call of 330 s: room for the pip install, and a rerun in 15 minutes
NEEDS_DATA = ("loader", "train", "embed")


OPTIONS = [  # (flag, default, help); the sizes themselves are GPU / SMOKE above
    ("--out", "paper_check.json", "the JSON (written atomically after every part)"),
    ("--table", "", "also write the table here (markdown; rewritten after every part)"),
    ("--work-dir", "", "keep data and runs here (default: a temporary folder, removed)"),
    ("--workers", 0, "loader workers per GPU (default: 8 on a GPU, 2 for --cpu-smoke)"),
    ("--parts", "", "only these parts, comma-separated (e.g. 'kmeans,train vit_b32'; 'train' names every "
                    "recipe); preflight always runs, data where a part needs it"),
    ("--deadline-s", -1.0, f"start a part only if its expected time fits in what is left of this many seconds "
                           f"(default: {DEADLINE_S:.0f} on a GPU, none for --cpu-smoke)"),
    ("--expect", "", "override expected seconds, e.g. 'kmeans=90,train vit_b32=150'"),
    ("--resume", "", "a JSON of an earlier run: keep its finished parts, run the rest"),
]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="CPU, tiny sizes, one round (CI)")
    for flag, default, text in OPTIONS:
        p.add_argument(flag, type=type(default), default=default, help=text)
    return p.parse_args(argv)


def _config_file(model: str) -> str:
    return train_bench.model_args(model)[1]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def part_preflight(dev: torch.device) -> dict:
    """What runs here, and one tiny training step (engine, loss, optimizer) on the device."""
    try:
        import faiss
        faiss_kind = f"faiss-gpu {faiss.__version__}" if hasattr(faiss, "StandardGpuResources") else f"faiss-cpu {faiss.__version__}"
    except ImportError:
        faiss_kind = None
    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "driver": _driver() if dev.type == "cuda" else None, "open_clip_torch": _version("open_clip_torch"),  # open_clip_train ships in the same wheel
           "webdataset": _version("webdataset"), "faiss": faiss_kind, "cpu_cores": os.cpu_count(),
           "capability": list(torch.cuda.get_device_capability(dev)) if dev.type == "cuda" else None}
    r = Recipe(batch_per_gpu=4, precision="amp_bf16" if dev.type == "cuda" else "fp32", device=dev.type)
    step = ModelOnly(r, dev, _config_file("tiny-vit"))
    out["tiny_step_samples_per_s"] = step.rate(steps=2, warmup=1)
    return out


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
            "jpeg256_shards": len(s256), "jpeg512": pattern(s512), "jpeg512_samples": c["jpeg512"],
            "jpeg512_kb": kb(s512, c["jpeg512"])}


def part_loader(c: dict, data: dict, workers: int) -> dict:
    out = {}
    for size in ("jpeg256", "jpeg512"):
        out[f"{size}_per_core"] = loader_rate.rate(data[size], "ViT-B-32", batch=c["loader_batch"],
                                                   max_samples=c["loader_samples"])["samples_per_s"]
    out["jpeg256_workers"] = workers
    out["jpeg256_all_workers"] = loader_rate.rate(data["jpeg256"], "ViT-B-32", workers=workers, batch=c["loader_batch"],
                                                  warmup_batches=workers + 1,
                                                  max_samples=c["loader_all_samples"])["samples_per_s"]
    out["workers_needed_anchors"] = {k: loader_rate.workers_needed(v, out["jpeg256_per_core"]) for k, v in ANCHORS.items()}
    return out


def _alloc_failed(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and is_alloc_failure(str(e)))


def _model_only(r: Recipe, dev: torch.device) -> tuple[Recipe, dict]:
    """Ceiling, FLOPs and peak memory; the batch is halved until a step fits."""
    while True:
        try:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            mo = ModelOnly(r, dev, _config_file(r.model))
            rate = mo.rate(steps=max(3, r.timed_steps // 2))
            out = {"model_only_batch": r.batch_per_gpu, "model_only_samples_per_s": rate, "flops": mo.flops(),
                   "model_only_peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
            del mo
            gc.collect()  # the trainers that follow need the device memory back
            return r, out
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _alloc_failed(e) or r.batch_per_gpu // 2 < MIN_BATCH:
                raise
            r = Recipe(**{**r.__dict__, "batch_per_gpu": r.batch_per_gpu // 2})
        finally:
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def recipe(c: dict, name: str, dev: torch.device, workers: int) -> Recipe:
    model, batch, precision, warm, timed = c["recipes"][name]
    return Recipe(model=model, batch_per_gpu=batch, precision=precision, steps=(warm + timed) * workers,
                  warmup=warm * workers, workers=workers, nproc=1, device=dev.type,
                  lock_image_unlocked_groups=c["unlocked_groups"], **LOCKS)


def part_train(c: dict, name: str, data: dict, work: str, dev: torch.device, workers: int, peak: tuple,
               deadline: float | None) -> dict:
    """`peak`: (data-sheet TFLOP/s or None, measured matmul TFLOP/s or None) for the MFUs."""
    r = recipe(c, name, dev, workers)
    r.check()
    need = r.steps * r.global_batch
    if data["jpeg256_samples"] < need or data["jpeg256_shards"] % workers:
        raise ValueError(f"{name}: {r.steps} steps of {r.global_batch} need {need:,} samples in shards that split "
                         f"evenly over {workers} workers; the data part made {data['jpeg256_samples']:,} in "
                         f"{data['jpeg256_shards']} shards")
    paper_batch = r.batch_per_gpu
    r, out = _model_only(r, dev)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dev.type == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) - 1)))
    probe = None
    if dev.type == "cuda":
        probe = lambda: Polled(dev)  # noqa: E731  (trainers are child processes: device-wide use)
    out.update(rounds(r, data["jpeg256"], data["jpeg256_samples"], work, env, c["rounds"], peak=probe, deadline=deadline))
    out["batch_per_gpu"] = out["recipe"]["batch_per_gpu"]
    out["batch_note"] = ("the paper's per-GPU batch" if out["batch_per_gpu"] == paper_batch
                         else f"{paper_batch} did not fit; halved to {out['batch_per_gpu']}")
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


def _has_faiss_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources")


def part_kmeans(c: dict, dev: torch.device) -> dict:
    """Ours against every peer on the same device (faiss where it runs there, the plain-torch
    Lloyd always), from the same init; the bytes our kernels move, counted on the first K."""
    x = kmeans_scale.embeddings(c["kmeans_n"], c["kmeans_d"], 0, dev)
    same_device_faiss = dev.type == "cpu" or _has_faiss_gpu()  # faiss-cpu beside a GPU is another device
    out = {}
    for i, k in enumerate(c["kmeans_k"]):
        row = kmeans_scale.run(0, 0, k, c["kmeans_iters"], dev.type, x=x, skip_faiss=not same_device_faiss)
        init = kmeans(x, k, iters=0, seed=0, spherical=True, device=dev).centroids  # the seeding run() used
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)  # noqa: E731
        sync()
        t = time.perf_counter()
        cents, _ = kmeans_check.torch_lloyd(x, init, c["kmeans_iters"], dev, spherical=True)
        sync()
        row["torch_lloyd_s"] = time.perf_counter() - t
        row["torch_lloyd_objective_ratio"] = row["ours_objective"] / kmeans_scale.objective(x, cents, dev)
        peers = {"torch-lloyd": row["torch_lloyd_s"]}
        if row.get("faiss") and row.get("faiss_s"):
            peers[row["faiss"]] = row["faiss_s"]
        row["best_peer"] = min(peers, key=peers.get)
        row["best_peer_time_ratio"] = row["ours_s"] / peers[row["best_peer"]]
        if i == 0:  # the bandwidth row: what our kernels move, counted in an untimed run from the same init
            moved = kmeans_check.device_bytes(lambda: kmeans(x, k, iters=c["kmeans_iters"], tol=0, seed=0, spherical=True,
                                                             init=init, backend="torch", device=dev), dev)
            row["bytes_moved"] = moved
            row["bandwidth_gbs"] = moved / max(row["ours_s"] - row["h2d_copy_s"], 1e-9) / 1e9
            row["bandwidth_method"] = "bytes every device op reads and writes (kmeans_check.DeviceBytes)"
            if row.get("copy_bandwidth_gbs"):
                row["bandwidth_fraction"] = row["bandwidth_gbs"] / row["copy_bandwidth_gbs"]
        out[f"k{k}"] = row
        gc.collect()
    return out


def wanted(parts_flag: str, c: dict) -> list[str]:
    """The parts to run, in ORDER; preflight always; data where a part that needs it runs."""
    known = [p for p in ORDER if not p.startswith("train ")] + [f"train {n}" for n in c["recipes"]]
    if not parts_flag:
        chosen = set(known)
    else:
        asked = {p.strip() for p in parts_flag.split(",") if p.strip()}
        bad = sorted(a for a in asked if a not in known and a != "train")
        if bad:
            raise SystemExit(f"error: --parts: unknown part(s) {bad}; known: {', '.join(known)}")
        chosen = {p for p in known if p in asked or ("train" in asked and p.startswith("train "))}
    chosen |= {"preflight"}
    return [p for p in ORDER if p in chosen]


def _skip(result: dict, part: str, why: str) -> None:
    result["skipped"].append(part)
    result["skip_reasons"][part] = why


def schedule(parts: list[tuple[str, Callable[[], object]]], expected: dict, deadline_s: float, result: dict,
             write: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
    """Run each part whose expected seconds fit in what is left of `deadline_s` (from now), in
    order; record skipped ones with what they needed; call `write` after every part. A part
    without an expected time is taken to need none. A failed preflight stops the rest; a part
    that needs the data is skipped when the data part did not give them."""
    t0 = clock()
    for part, fn in parts:
        left = deadline_s - (clock() - t0)
        need = expected.get(part, 0.0)
        if part.startswith(NEEDS_DATA) and not result.get("data"):
            _skip(result, part, "no data (the data part did not run)")
        elif need > left:
            _skip(result, part, f"expected {need:.0f} s, {max(left, 0):.0f} s left")
        else:
            value = timed_part(result, part, fn)
            result.setdefault("ran", []).append(part)  # the JSON's objects are key-sorted: the order is kept here
            if part.startswith("train "):
                result["train"][part[6:]] = value
            else:
                result[part] = value
            if part == "preflight" and value is None:
                for p, _ in parts[1:]:
                    _skip(result, p, "the preflight failed")
                write()
                return
        write()


def timed_part(result: dict, part: str, fn):
    """gpu_check's guard (a failing part is recorded in `errors`, its seconds in `part_seconds`),
    plus a progress line."""
    out = guarded(result, part, fn)
    print(f"paper_check: {part} done in {result['part_seconds'][part]} s", file=sys.stderr, flush=True)
    return out


def done_parts(prior: dict) -> dict:
    """{part: value} of an earlier run's parts that finished (not failed)."""
    failed = {e.split(":", 1)[0] for e in prior.get("errors", [])}
    out = {p: prior[p] for p in ORDER if not p.startswith("train ") and prior.get(p) and p not in failed}
    out.update({f"train {n}": v for n, v in (prior.get("train") or {}).items() if v and f"train {n}" not in failed})
    out.pop("preflight", None)  # every run checks its own machine
    return out


def plan(a, c: dict, result: dict, work: str, dev: torch.device, workers: int, deadline: float | None,
         prior: dict) -> list:
    """(part, thunk) for the wanted parts not already done, in ORDER."""
    data = lambda: result.get("data") or {}  # noqa: E731  (filled by the data part)

    def peak() -> tuple:
        ceil = result.get("ceilings") or {}
        return ceil.get("peak_bf16_tflops_datasheet"), ceil.get("matmul_tflops")

    thunks = {"preflight": lambda: part_preflight(dev), "ceilings": lambda: part_ceilings(dev, a.cpu_smoke),
              "data": lambda: part_data(c, work), "loader": lambda: part_loader(c, data(), workers),
              "kmeans": lambda: part_kmeans(c, dev), "embed": lambda: part_embed(c, data(), work, dev, workers)}
    for name in c["recipes"]:
        thunks[f"train {name}"] = lambda name=name: part_train(c, name, data(), work, dev, workers, peak(), deadline)
    todo = [p for p in wanted(a.parts, c) if p not in prior]
    if not any(p.startswith(NEEDS_DATA) for p in todo):
        todo = [p for p in todo if p != "data"]
    elif "data" not in todo:
        todo.insert(todo.index("loader") if "loader" in todo else 1, "data")
        todo = sorted(todo, key=ORDER.index)
    return [(p, thunks[p]) for p in todo]


def expected_times(a, mode: str) -> dict:
    out = dict(EXPECTED_S[mode])
    for item in filter(None, (x.strip() for x in a.expect.split(","))):
        part, _, sec = item.rpartition("=")
        try:
            out[part.strip()] = float(sec)
        except ValueError:
            raise SystemExit(f"error: --expect: '{item}' is not part=seconds") from None
    return out


def main(argv=None) -> int:
    a = parse(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        sys.exit("error: paper_check: no CUDA device is visible; run with --cpu-smoke for the CPU check")
    c, t0 = (SMOKE if a.cpu_smoke else GPU), time.time()
    mode = "cpu-smoke" if a.cpu_smoke else "gpu"
    dev = dist_utils.init_distributed(device="cpu" if a.cpu_smoke else "cuda").device
    if dev.type == "cpu":  # as many threads as the trainer children get (OMP_NUM_THREADS): 2 would spin on 2 cores
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    deadline_s = a.deadline_s if a.deadline_s >= 0 else (float("inf") if a.cpu_smoke else DEADLINE_S)
    workers = a.workers or (2 if a.cpu_smoke else 8)  # the setting: 8 loader workers per GPU
    prior = done_parts(read_json(a.resume)) if a.resume else {}
    result = {"mode": mode, "torch": torch.__version__, "cpu_cores": os.cpu_count(),
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "workers": workers,
              "deadline_s": deadline_s if deadline_s != float("inf") else None, "expected_s": expected_times(a, mode),
              "errors": [], "skipped": [], "skip_reasons": {}, "part_seconds": {}, "train": {},
              "resumed_from": a.resume or None, "resumed_parts": sorted(prior)}
    for part, value in prior.items():
        if part.startswith("train "):
            result["train"][part[6:]] = value
        else:
            result[part] = value
    work = a.work_dir or tempfile.mkdtemp(prefix="paper_check_")
    deadline = t0 + deadline_s if deadline_s != float("inf") else None

    def write() -> None:
        result["seconds"] = time.time() - t0
        write_json(result, a.out)
        if a.table:
            write_text(table(result) + "\n", a.table)

    try:
        schedule(plan(a, c, result, work, dev, workers, deadline, prior), result["expected_s"], deadline_s, result,
                 write)
    finally:
        if not a.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    write()
    print(table(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
