"""`launch/pretrain.py --dry-run`: the plan of a run, computed without training or writing a file.

It resolves the config, counts the shards and samples, builds the model on PyTorch's `meta`
device (no memory, no weight download) to count parameters, and prints per stage the steps and
samples, the per-rank micro-batch and accumulation, the embedding matrix and k-means memory per
rank, the checkpoint sizes and every path the run will write. Stages >= 1 draw their batches from
the cluster plan, which drops each label's remainder smaller than a group, so their step counts
are upper bounds unless `max_steps` fixes them.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from mcl_dist.config import Config, default_run_dir, micro_batch_size, stage_steps
from mcl_dist.config_load import check_world, load_config
from mcl_dist.data.shards import count_samples, expand_urls, is_local, local_path
from mcl_dist.lr_schedule import warmup_steps
from mcl_dist.objectives import get_objective

KMEANS_CHUNK = 65536  # kmeans()'s default chunk of rows on a GPU


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def count_from_stats(urls: list[str]) -> int | None:
    """img2dataset writes `<shard>_stats.json` beside each tar; its `successes` is the shard's
    sample count, so a dry run over millions of samples need not read the tars."""
    total = 0
    for url in urls:
        path = os.path.splitext(local_path(url))[0] + "_stats.json"
        if not is_local(url) or not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                total += int(json.load(f)["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total


def data_plan(cfg: Config) -> dict[str, Any]:
    d = cfg.data
    if d.synthetic and not d.train_shards:
        n_shards = math.ceil(d.synthetic_train / d.synthetic_samples_per_shard)
        return {"shards": n_shards, "samples": d.num_samples or d.synthetic_train,
                "source": f"synthetic data, made under {d.synthetic_dir}/ on first use (kept if present)"}
    urls = expand_urls(d.train_shards)
    if d.num_samples:
        return {"shards": len(urls), "samples": d.num_samples, "source": "data.num_samples"}
    stats = count_from_stats(urls)
    if stats is not None:
        return {"shards": len(urls), "samples": stats, "source": "img2dataset *_stats.json"}
    return {"shards": len(urls), "samples": count_samples(urls), "source": "tar headers"}


def _model_sizes(cfg: Config) -> dict[str, Any]:
    """Parameter and state sizes from a model built on the meta device; trainable counts per stage."""
    objective = get_objective(cfg)
    with torch.device("meta"):
        bundle = objective.create_bundle(torch.device("meta"), pretrained="")
    model = bundle["model"]
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    dim = int(getattr(model, "output_dim", 0) or getattr(getattr(model, "visual", None), "output_dim", 0)
              or getattr(model, "feature_dim", 0))
    trainable = []
    for st in cfg.stages:
        for p in model.parameters():
            p.requires_grad_(True)
        objective.lock(model)
        objective.lock(model, st)
        trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
    return {"name": bundle["name"], "params": sum(p.numel() for p in model.parameters()),
            "state_bytes": state_bytes, "dim": dim, "trainable": trainable}


def build_plan(cfg: Config, config_path: str, run_dir: str, world: int) -> dict[str, Any]:
    check_world(cfg, world, config_path)
    data = data_plan(cfg)
    n, t = data["samples"], cfg.train
    model = _model_sizes(cfg)
    micro = micro_batch_size(cfg, world)
    moments = 1 if t.optimizer == "lars" else 2  # AdamW keeps exp_avg and exp_avg_sq (fp32)
    stages = []
    for s, st in enumerate(cfg.stages):
        pretrained = s == 0 and bool(st.pretrained)
        steps = 0 if pretrained else stage_steps(cfg, s, n)
        exact = s == 0 or (st.max_steps if st.max_steps is not None else t.max_steps) > 0
        stages.append({
            "stage": s, "pretrained": st.pretrained if pretrained else "", "steps": steps, "exact": exact,
            "samples": steps * t.global_batch_size, "lr": st.lr if st.lr is not None else t.lr,
            "k": st.k if s else None, "group_size": st.group_size if s else None, "init": st.init if s else None,
            "gather": (world > 1) if s == 0 else st.group_size > micro,
            "trainable": model["trainable"][s],
            "train_checkpoint_bytes": model["state_bytes"] + 4 * moments * model["trainable"][s]})
    rows = math.ceil(n / world)
    k_max = max([st.k for st in cfg.stages[1:]], default=0)
    chunk = min(KMEANS_CHUNK, rows)
    dim = model["dim"]
    notes = [f"stage {st['stage']}: its warm-up ({warmup_steps(t, st['steps'])} steps) >= its {st['steps']} steps: "
             f"it never leaves the warm-up" for st in stages if st["steps"] and warmup_steps(t, st["steps"]) >= st["steps"]]
    notes += weights_notes(cfg)
    return {"config": config_path, "run_dir": run_dir, "notes": notes, "world": world, "data": data, "model": model,
            "micro": micro, "accum": t.accum_freq, "global_batch": t.global_batch_size, "stages": stages,
            "embed_rows": rows, "embed_bytes": rows * dim * 2,  # fp16 parts
            # per-row label/distance/bound state + one chunk of rows and scores + centroid sums
            "kmeans_bytes": rows * 20 + chunk * (k_max + 2 * dim) * 4 + k_max * dim * 12 if k_max else 0,
            "paths": planned_paths(cfg, run_dir, world)}


def weights_notes(cfg: Config) -> list[str]:
    """Where pretrained weights come from; an unknown tag is an error now, not after hours of queueing."""
    objective = get_objective(cfg)
    keys: dict[str, list[str]] = {}
    for key, tag in (("model.pretrained", cfg.model.pretrained), ("stages.0.pretrained", cfg.stages[0].pretrained)):
        if not tag or os.path.exists(tag) or not objective.downloads(key, tag):
            continue
        keys.setdefault(tag, []).append(key)
    return [f"{' and '.join(k)}: open_clip weights '{tag}' (downloaded into open_clip's cache on first use)"
            for tag, k in keys.items()]


def planned_paths(cfg: Config, run_dir: str, world: int) -> list[str]:
    j = os.path.join
    out = [j(run_dir, "config.yaml"), j(run_dir, "manifest.json"), j(run_dir, "data_report.json")]
    if cfg.data.synthetic and not cfg.data.train_shards:
        out.append(f"{cfg.data.synthetic_dir}/ (synthetic shards, MMVP folder, zero_shot.json; first use only)")
    for s, st in enumerate(cfg.stages):
        d = j(run_dir, f"stage_{s}")
        if s:
            out += [j(d, "embed", f"part{{0000..{world - 1:04d}}}-of{world:04d}.npy"),
                    j(d, "kmeans", f"assign{{0000..{world - 1:04d}}}-of{world:04d}.npz"),
                    j(d, "kmeans", "centroids.npz"), j(d, "kmeans", "kmeans.json"), j(d, "labels.npz")]
            if s == 1:
                out.append(j(cfg.data.index_dir or j(run_dir, "index"), "") + " (tar index cache)")
        if not (s == 0 and st.pretrained):
            out += [j(d, "checkpoints", "step_*.pt") + f" (last {cfg.train.keep_checkpoints} kept)",
                    j(d, "metrics.jsonl"), j(d, "tb", "")]
            if cfg.debug.log_batches:
                out.append(j(d, "batches", "rank*.jsonl"))
        out.append(j(d, "checkpoint.pt"))
    out.append(j(run_dir, "integrated", "model.pt"))
    if cfg.eval.enabled:
        out.append(j(run_dir, "eval", "results.json"))
    out += [j(run_dir, "report.md"), j(run_dir, "*.png") + " (loss curves, cluster sizes, MMVP)"]
    return out


def format_plan(p: dict[str, Any]) -> str:
    m, d = p["model"], p["data"]
    lines = [f"dry run of {p['config']} (nothing trained, nothing written)",
             f"run directory: {p['run_dir']}",
             f"data: {d['shards']} shards, {d['samples']:,} samples per epoch ({d['source']})",
             f"model: {m['name']}, {m['params']:,} parameters, feature dim {m['dim']}",
             f"world size {p['world']}: global batch {p['global_batch']} = {p['world']} ranks x "
             f"micro-batch {p['micro']} x accumulation {p['accum']}",
             "", "stage  steps        samples          lr        K     group  init      gather  trainable"]
    for st in p["stages"]:
        if st["pretrained"]:
            lines.append(f"{st['stage']:<6} pretrained '{st['pretrained']}' taken as stage 0 (no training)")
            continue
        steps = f"{'' if st['exact'] else '<='}{st['steps']:,}"
        lines.append(f"{st['stage']:<6} {steps:<12} {st['samples']:<16,} {st['lr']:<9.3g} {st['k'] or '-':<5} "
                     f"{st['group_size'] or '-':<6} {st['init'] or '-':<9} {'yes' if st['gather'] else 'no':<7} "
                     f"{st['trainable']:,}")
    if any(not st["exact"] for st in p["stages"]):
        lines.append("(<=: the cluster plan drops each label's remainder smaller than a group)")
    lines += ["", f"per rank: embeddings {p['embed_rows']:,} x {m['dim']} fp16 = {_bytes(p['embed_bytes'])}"
              + (f"; k-means working memory ~{_bytes(p['kmeans_bytes'])}" if p["kmeans_bytes"] else ""),
              f"checkpoints: stage checkpoint.pt {_bytes(m['state_bytes'])}; training checkpoints (model + "
              f"optimizer, DDP) up to {_bytes(max(st['train_checkpoint_bytes'] for st in p['stages']))} each; "
              f"integrated model {_bytes(m['state_bytes'] * len(p['stages']))}",
              ""] + [f"note: {n}" for n in p["notes"]] + ["paths written:"] + [f"  {path}" for path in p["paths"]]
    return "\n".join(lines)


def dry_run(config_path: str, run_dir: str | None, overrides: list[str], world: int | None = None) -> int:
    cfg = load_config(config_path, overrides)
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    run_dir = run_dir or cfg.run_dir or default_run_dir(config_path)
    plan = build_plan(cfg, config_path, run_dir, world)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_plan(plan), flush=True)
    return 0
