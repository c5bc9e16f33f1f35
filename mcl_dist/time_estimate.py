"""How long will a run take: per-stage and total hours from a shipped table of measured rates.

Every rate below was measured by this project on the named GPU (one GPU) and carries its date,
commit and source. A rate that was not measured is never guessed: the estimate names it ("no
measured rate for X") and leaves that part out of the total, which then says it is partial.

Several GPUs are a projection, labelled so: per step, the one-GPU compute time of the per-GPU
batch plus the gradient all-reduce (2 (W-1)/W x trainable parameters x 4 bytes, fp32 gradients)
and the feature all-gather ((W-1)/W x global batch x 2 towers x embed dim x 4 bytes) at the
interconnect's bus bandwidth (data-sheet NVLink, not measured: the H200 check ran on one GPU),
with no overlap of communication and compute (an upper bound on the step time). Embedding and
k-means split their rows over the GPUs (k-means adds one small all-reduce per pass, ignored).
"""
from __future__ import annotations

from typing import Optional

# samples/s per GPU of stage-0 training (ours), and of the pipeline's embed step
TRAIN_RATES = [
    {"model": "ViT-B-32", "gpu": "H200", "samples_per_s_per_gpu": 2663.1,
     "setting": "random init, no locks, 256/GPU, bf16 AMP, 8 loader workers (loader-bound; the configs' "
                "locked recipes run at least this fast)",
     "date": "2026-11-30", "commit": "a74663b", "source": "docs/bench/gpu/gpu_check_h200.json (stage1.stage0_samples_per_s)"},
]
EMBED_RATES = [
    {"model": "ViT-B-32", "gpu": "H200", "samples_per_s_per_gpu": 2253.7,
     "setting": "pipeline embed step, fp32 then, 8 loader workers, PNG decode included",
     "date": "2026-11-30", "commit": "a74663b", "source": "docs/bench/gpu/gpu_check_h200.json (embed)"},
]
# seconds per assignment pass per million rows, at the measured width; scaled linearly by D
KMEANS_RATES = [
    {"gpu": "H200", "s_per_iter_per_mrow": 0.889 / 21 / 2.0, "d": 512, "k": 100,
     "setting": "2M x 512 fp16 on the device, K 100, 20 iterations (21 passes) in 0.889 s",
     "date": "2026-11-30", "commit": "a74663b", "source": "docs/bench/gpu/gpu_check_h200.json (kmeans)"},
]
# all-reduce bus bandwidth, GB/s: data sheets (NVLink 4: 900 GB/s both directions), not measured
INTERCONNECT_GBS = {"H200": 450.0, "H100": 450.0, "A100": 300.0}
# parameters of the full models (open_clip), for the gradient volume when no count is given
MODEL_PARAMS = {"ViT-B-32": 151_277_313, "ViT-L-14": 427_616_513, "RN50": 102_007_137}
EMBED_DIM = {"ViT-B-32": 512, "ViT-L-14": 768, "RN50": 1024}


def _find(table: list[dict], gpu: str, model: Optional[str] = None) -> Optional[dict]:
    return next((r for r in table if r["gpu"] in gpu and (model is None or r["model"] == model)), None)


def comm_seconds_per_step(world: int, global_batch: int, grad_params: int, embed_dim: int, busbw_gbs: float) -> float:
    if world <= 1:
        return 0.0
    frac = (world - 1) / world
    allreduce = 2 * frac * grad_params * 4
    gather = frac * global_batch * 2 * embed_dim * 4
    return (allreduce + gather) / (busbw_gbs * 1e9)


def estimate(model: str, gpu: str, world_size: int, stage_samples: list[int], embed_rows: int = 0,
             kmeans_iters: int = 20, dim: Optional[int] = None, global_batch: int = 1024,
             grad_params: Optional[int] = None) -> dict:
    """Hours per stage and in total. stage_samples[s]: samples trained in stage s (0 for a
    pretrained stage 0); stages >= 1 embed `embed_rows` rows and run `kmeans_iters` iterations."""
    missing, rows_used, notes = [], [], []
    train, embed, km = _find(TRAIN_RATES, gpu, model), _find(EMBED_RATES, gpu, model), _find(KMEANS_RATES, gpu)
    dim = dim or EMBED_DIM.get(model)
    if any(stage_samples) and train is None:
        missing.append(f"no measured rate for training {model} on {gpu}")
    if len(stage_samples) > 1 and embed is None:
        missing.append(f"no measured rate for embedding with {model} on {gpu}")
    if len(stage_samples) > 1 and (km is None or dim is None):
        missing.append(f"no measured rate for k-means on {gpu}" if km is None else f"no embedding width for {model}")
    step_s = None
    if train is not None:
        rows_used.append(train)
        per_gpu_batch = global_batch / world_size
        step_s = per_gpu_batch / train["samples_per_s_per_gpu"]
        if world_size > 1:
            bw = next((v for k, v in INTERCONNECT_GBS.items() if k in gpu), None)
            params = grad_params or MODEL_PARAMS.get(model)
            if bw is None or params is None or dim is None:
                missing.append(f"no interconnect rate or model size for the {world_size}-GPU projection on {gpu}")
                step_s = None
            else:
                step_s += comm_seconds_per_step(world_size, global_batch, params, dim, bw)
                notes.append(f"projection: {world_size} GPUs from one measured GPU plus all-reduce/all-gather volume "
                             f"at {bw:.0f} GB/s (data-sheet NVLink)")
    rows_used += [r for r in (embed, km) if r is not None]
    stages = []
    for s, n in enumerate(stage_samples):
        row = {"stage": s, "train_h": 0.0 if n == 0 else (n / global_batch * step_s / 3600 if step_s else None),
               "embed_h": None, "kmeans_h": None}
        if s >= 1:
            row["embed_h"] = embed_rows / (embed["samples_per_s_per_gpu"] * world_size) / 3600 if embed else None
            if km is not None and dim:
                per_pass = km["s_per_iter_per_mrow"] * dim / km["d"] * embed_rows / 1e6 / world_size
                row["kmeans_h"] = (kmeans_iters + 2) * per_pass / 3600
        parts = [row["train_h"]] + ([row["embed_h"], row["kmeans_h"]] if s >= 1 else [])
        row["total_h"] = sum(p for p in parts if p is not None)
        row["complete"] = all(p is not None for p in parts)
        stages.append(row)
    return {"model": model, "gpu": gpu, "world_size": world_size, "stages": stages,
            "total_h": sum(r["total_h"] for r in stages), "complete": all(r["complete"] for r in stages),
            "projection": world_size > 1, "missing": missing, "notes": notes,
            "rates": [{k: r[k] for k in ("date", "commit", "source")} for r in rows_used]}


def format_estimate(est: dict) -> list[str]:
    """Lines for --dry-run."""
    def h(v):  # minutes below an hour: a k-means of 0.004 h should not print as 0.00 h
        return "n/a" if v is None else f"{v:.2f} h" if v >= 1 else f"{v * 60:.1f} min"

    label = " (projection)" if est["projection"] else ""
    lines = [f"time estimate{label}: {est['model']} on {est['world_size']} x {est['gpu']}"]
    for r in est["stages"]:
        lines.append(f"  stage {r['stage']}: train {h(r['train_h'])}, embed {h(r['embed_h'])}, "
                     f"k-means {h(r['kmeans_h'])}, total {h(r['total_h'])}")
    lines.append(f"  total: {est['total_h']:.2f} h" + ("" if est["complete"] else " (partial: rates missing)"))
    lines += [f"  {m}" for m in est["missing"] + est["notes"]]
    lines += [f"  rate: {r['source']}, {r['date']}, commit {r['commit']}" for r in est["rates"]]
    return lines
