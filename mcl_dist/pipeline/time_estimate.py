"""How long will a run take: per-stage and total hours from a shipped table of measured rates.

Every rate below was measured by this project on the named GPU (one GPU) and carries its date,
commit and source, and the CPU cores and loader workers per GPU it ran with (a loader-bound rate
holds only with as many cores). A rate that was not measured is never guessed: the estimate names
it ("no measured rate for X"), the stage prints "unknown" (never 0.0), and the total is the sum of
what is known, marked partial.

MCL stages (>= 1) train at `mcl_stage_factor` x the stage-0 rate (measured: 0.85 with the
cluster-bucketed sampler, indexed reads and the masked loss, i.e. +17% time per MCL stage).

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
     "mcl_stage_factor": 0.854, "cpu_cores_per_gpu": 16, "loader_workers_per_gpu": 8,
     "setting": "random init, no locks, 256/GPU, bf16 AMP, 8 loader workers (loader-bound; the configs' "
                "locked recipes run at least this fast); MCL stage: K 32, groups of 32, 2276 samples/s",
     "date": "2026-11-30", "commit": "a74663b",
     "source": "docs/bench/gpu/gpu_check_h200.json (stage1.stage0_samples_per_s, stage1.ratio)"},
]
EMBED_RATES = [
    {"model": "ViT-B-32", "gpu": "H200", "samples_per_s_per_gpu": 2253.7,
     "cpu_cores_per_gpu": 16, "loader_workers_per_gpu": 8,
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
    factor = (train or {}).get("mcl_stage_factor", 1.0)
    stages = []
    for s, n in enumerate(stage_samples):
        rate_factor = factor if s >= 1 else 1.0
        row = {"stage": s, "train_h": 0.0 if n == 0 else (n / global_batch * step_s / rate_factor / 3600 if step_s else None),
               "embed_h": None, "kmeans_h": None, "pretrained": n == 0 and s == 0}
        if s >= 1:
            row["embed_h"] = embed_rows / (embed["samples_per_s_per_gpu"] * world_size) / 3600 if embed else None
            if km is not None and dim:
                per_pass = km["s_per_iter_per_mrow"] * dim / km["d"] * embed_rows / 1e6 / world_size
                row["kmeans_h"] = (kmeans_iters + 2) * per_pass / 3600
        parts = [row["train_h"]] + ([row["embed_h"], row["kmeans_h"]] if s >= 1 else [])
        row["complete"] = all(p is not None for p in parts)
        row["known_h"] = sum(p for p in parts if p is not None)
        row["total_h"] = row["known_h"] if row["complete"] else None
        stages.append(row)
    if factor != 1.0 and len(stage_samples) > 1:
        notes.append(f"MCL stages train at {factor:.2f}x the stage-0 rate (measured, +{1 / factor - 1:.0%} time)")
    if train is not None and train.get("cpu_cores_per_gpu"):
        notes.append(f"the training rate assumes {train['cpu_cores_per_gpu']} CPU cores and "
                     f"{train['loader_workers_per_gpu']} loader workers per GPU (it was loader-bound; fewer cores, "
                     f"a lower rate)")
    complete = all(r["complete"] for r in stages)
    known = sum(r["known_h"] for r in stages)
    return {"model": model, "gpu": gpu, "world_size": world_size, "stages": stages,
            "total_h": known if complete else None, "known_h": known, "complete": complete,
            "projection": world_size > 1, "missing": missing, "notes": notes,
            "rates": [{k: r[k] for k in ("date", "commit", "source")} for r in rows_used]}


def _hours(v: Optional[float]) -> str:
    """Minutes below an hour and seconds below a minute (a k-means of 0.004 h should not print
    as 0.00 h); None: unknown."""
    if v is None:
        return "unknown"
    if v >= 1:
        return f"{v:.2f} h"
    return f"{v * 60:.1f} min" if v * 60 >= 1 else f"{v * 3600:.0f} s" if v * 3600 >= 1 else "< 1 s"


def format_estimate(est: dict) -> list[str]:
    """Lines for --dry-run: a part without a measured rate is "unknown", never a number."""
    label = " (projection)" if est["projection"] else ""
    lines = [f"time estimate{label}: {est['model']} on {est['world_size']} x {est['gpu']}"]
    for r in est["stages"]:
        if r["pretrained"]:
            lines.append(f"  stage {r['stage']}: pretrained, nothing to train")
            continue
        steps = f"train {_hours(r['train_h'])}"
        if r["stage"] >= 1:
            steps += f", embed {_hours(r['embed_h'])}, k-means {_hours(r['kmeans_h'])}"
        lines.append(f"  stage {r['stage']}: {steps}, total {_hours(r['total_h'])}")
    if est["complete"]:
        lines.append(f"  total: {est['total_h']:.2f} h")
    elif est["known_h"] > 0:
        lines.append(f"  total: unknown (partial: rates missing; the parts with rates add up to {_hours(est['known_h'])})")
    else:
        lines.append("  total: unknown (partial: rates missing)")
    lines += [f"  {m}" for m in est["missing"] + est["notes"]]
    lines += [f"  rate: {r['source']}, {r['date']}, commit {r['commit']}" for r in est["rates"]]
    return lines
