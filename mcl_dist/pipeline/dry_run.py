"""`launch/pretrain.py --dry-run`: the plan of a run, computed without training or writing a file.

It resolves the config, counts the shards and samples, builds the model on PyTorch's `meta`
device (no memory, no weight download) to count parameters, and prints per stage the steps and
samples, the per-rank micro-batch and accumulation, warm-up, schedule, precision and epochs (each
train step's `describe`), an estimate of GPU memory per rank (mcl_dist/training/memory_estimate.py), the
embedding matrix and k-means memory per rank, the checkpoint sizes, every path the run will write
and the `torchrun` / `sbatch` lines that launch it. It makes the checks the run makes before its
first step through the same functions (load_config, check_world, the data's check_world), so it refuses
what the run would refuse with the same `error:` line; the data check that reads every tar header
(data/preflight.py check_index) is the run's alone; a CSV is read and its image files stat'ed here
as in the run (data/csv_data.py). Stages >= 1 draw their batches from
the cluster plan, which drops each label's remainder smaller than a group, so their step counts
are upper bounds unless `max_steps` fixes them. Steps, peak lr, warm-up and gathering come from the
functions the run calls (config.stage_steps / stage_peak_lr, lr_schedule.warmup_steps,
steps/train_step.py gathers), the paths from the steps' own outputs().
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from mcl_dist.core import layout
from mcl_dist.config.schema import (Config, ConfigError, default_run_dir, micro_batch_size, stage_max_steps,
                             stage_peak_lr, stage_steps)
from mcl_dist.config.load import check_k, check_world, load_config
from mcl_dist.config.origins import sources_of
from mcl_dist.data import group_cut
from mcl_dist.data.dataset_types import open_data
from mcl_dist.data.preflight import check_shard_count
from mcl_dist.objectives import get_objective
from mcl_dist.pipeline.launch_lines import launch_lines
from mcl_dist.pipeline.time_estimate import estimate, format_estimate
from mcl_dist.steps import plan_steps, run_files
from mcl_dist.steps.train_step import gathers
from mcl_dist.training.loggers import parse_report_to
from mcl_dist.training.lr_schedule import warmup_steps
from mcl_dist.training.memory_estimate import DEFAULT_GPU, memory_lines

KMEANS_CHUNK = 65536  # kmeans()'s default chunk of rows on a GPU


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def data_plan(cfg: Config, world: int = 1) -> dict[str, Any]:
    """{"shards" (or "rows" for a CSV), "samples", "source"}; refused, with the run's error, where
    stage 0 would leave one of `world` ranks without data (the run's check, data/dataset.py)."""
    d, stage0_trains = cfg.data, not cfg.stages[0].pretrained
    if d.synthetic and not d.train_shards:
        n_shards = math.ceil(d.synthetic_train / d.synthetic_samples_per_shard)
        check_shard_count(n_shards, world, stage0_trains)
        return {"shards": n_shards, "samples": d.num_samples or d.synthetic_train,
                "source": f"synthetic data, made under {d.synthetic_dir}/ on first use (kept if present)"}
    data = open_data(cfg)
    data.check_world(world, stage0_trains)
    plan = {"samples": d.num_samples, "source": "data.num_samples"} if d.num_samples else data.plan()
    return {f"{data.unit}s": len(data.units), "samples": plan["samples"], "source": plan["source"]}


def _units(plan: dict) -> str:
    unit = "rows" if "rows" in plan else "shards"
    return f"{plan[unit]} {unit if plan[unit] != 1 else unit[:-1]}"


def _model_sizes(cfg: Config) -> dict[str, Any]:
    """Parameter and state sizes from a model built on the meta device; trainable counts per stage."""
    objective = get_objective(cfg)
    with torch.device("meta"):
        bundle = objective.create_bundle(torch.device("meta"), pretrained="")
    model = bundle["model"]
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    dim = int(getattr(model, "output_dim", 0) or getattr(getattr(model, "visual", None), "output_dim", 0)
              or getattr(model, "feature_dim", 0))
    visual = getattr(model, "visual", None)
    image = {id(p) for p in (visual or model).parameters()}
    trainable, shares = [], []
    for st in cfg.stages:
        for p in model.parameters():
            p.requires_grad_(True)
        objective.lock(model)
        objective.lock(model, st)
        trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
        shares.append({"image": _share(model, lambda p: id(p) in image)})
        if visual is not None:
            shares[-1]["text"] = _share(model, lambda p: id(p) not in image and p.numel() > 1)  # not logit_scale
    return {"name": bundle["name"], "params": sum(p.numel() for p in model.parameters()),
            "state_bytes": state_bytes, "dim": dim, "trainable": trainable, "tower_shares": shares}


def _share(model: torch.nn.Module, tower) -> float:
    """The share of a tower's parameters that train."""
    params = [p for p in model.parameters() if tower(p)]
    total = sum(p.numel() for p in params)
    return sum(p.numel() for p in params if p.requires_grad) / total if total else 0.0


def build_plan(cfg: Config, config_path: str, run_dir: str, world: int, overrides: list[str] = (),
               gpu: str | None = None) -> dict[str, Any]:
    check_world(cfg, world, config_path)  # the run's checks, in the run's order (pipeline.run_pipeline)
    data = data_plan(cfg, world)
    if cfg.data.train_shards and not cfg.data.num_samples:  # counted data (the synthetic data's K: at load)
        check_k(cfg, data["samples"], f"counted from the {data['source']}", sources_of(cfg, config_path))
    n, t = data["samples"], cfg.train
    model = _model_sizes(cfg)
    micro = micro_batch_size(cfg, world)
    moments = 1 if t.optimizer == "lars" else 2  # AdamW keeps exp_avg and exp_avg_sq (fp32)
    stages = []
    for s, st in enumerate(cfg.stages):
        pretrained = s == 0 and bool(st.pretrained)
        steps = 0 if pretrained else stage_steps(cfg, s, n)
        exact = s == 0 or stage_max_steps(cfg, s) > 0
        stages.append({
            "stage": s, "pretrained": st.pretrained if pretrained else "", "steps": steps, "exact": exact,
            "samples": steps * t.global_batch_size, "lr": stage_peak_lr(cfg, s),
            "k": st.k if s else None, "group_size": st.group_size if s else None, "init": st.init if s else None,
            "gather": gathers(cfg, s, world),
            "trainable": model["trainable"][s],
            "train_checkpoint_bytes": model["state_bytes"] + 4 * moments * model["trainable"][s]})
    rows = math.ceil(n / world)
    k_max = max([max(cfg.cluster.k_candidates) if st.k == "auto" else st.k for st in cfg.stages[1:]], default=0)
    chunk = min(KMEANS_CHUNK, rows)
    dim = model["dim"]
    notes = [f"stage {st['stage']}: its warm-up ({warmup_steps(t, st['steps'])} steps) >= its {st['steps']} steps: "
             f"it never leaves the warm-up" for st in stages if st["steps"] and warmup_steps(t, st["steps"]) >= st["steps"]]
    notes += weights_notes(cfg)
    memory, warnings = memory_lines(cfg, model, micro, world, gpu)
    cuts, cut_warnings = cut_lines(cfg, n, world)
    warnings = warnings + cut_warnings
    hours = hours_lines(cfg, model, stages, n, world, gpu)
    return {"config": config_path, "run_dir": run_dir, "notes": notes, "world": world, "data": data, "model": model,
            "micro": micro, "accum": t.accum_freq, "global_batch": t.global_batch_size, "stages": stages,
            "embed_rows": rows, "embed_bytes": rows * dim * 2,  # fp16 parts
            # per-row label/distance/bound state + one chunk of rows and scores + centroid sums
            "kmeans_bytes": rows * 20 + chunk * (k_max + 2 * dim) * 4 + k_max * dim * 12 if k_max else 0,
            "paths": planned_paths(cfg, run_dir, world), "steps": step_lines(cfg, world),
            "synthetic": f"{cfg.data.synthetic_dir}/" if cfg.data.synthetic and not cfg.data.train_shards else "",
            "memory": memory, "warnings": warnings, "cuts": cuts, "hours": hours, "launch": launch_lines(config_path, run_dir, list(overrides), world),
            "tensorboard": "tensorboard" in parse_report_to(cfg.train.report_to)}


def hours_lines(cfg: Config, model: dict[str, Any], stages: list[dict], samples: int, world: int,
                gpu: str | None) -> list[str]:
    """Hours per stage on the chosen GPUs from the measured rates (mcl_dist/pipeline/time_estimate.py); a
    missing rate is named, never guessed."""
    name = model["name"].removesuffix("-quickgelu")  # QuickGELU costs what GELU does
    est = estimate(name, (gpu or DEFAULT_GPU).upper(), world, [st["samples"] for st in stages],
                   embed_rows=samples if len(stages) > 1 else 0, kmeans_iters=cfg.cluster.kmeans_iters,
                   dim=model["dim"] or None, global_batch=cfg.train.global_batch_size,
                   grad_params=max(model["trainable"]) or None)
    return format_estimate(est)


def cut_lines(cfg: Config, samples: int, world: int) -> tuple[list[str], list[str]]:
    """Per later stage, what the group cutting would drop, planned by the sampler on simulated
    labels (mcl_dist/data/group_cut.py); a stage over train.max_dropped_share is a warning here
    (an estimate) and the run's refusal once the real labels exist."""
    lines, warnings = [], []
    for s in range(1, len(cfg.stages)):
        d = group_cut.estimate(cfg, s, samples, world)
        lines.append(f"  {group_cut.describe(s, d)}")
        try:
            group_cut.check(cfg, s, d, world)
        except ConfigError as e:
            warnings.append(f"{e} (estimated; the run refuses the stage if its labels are like this)")
    if lines:
        lines.insert(0, f"group cutting per stage (estimate: {group_cut.LABEL_MODEL}; the run measures its "
                        f"real labels):")
    return lines, warnings


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
    """Exactly the paths the run writes: the plan's steps' outputs plus the run's own files."""
    out = run_files(cfg, run_dir)
    for step in plan_steps(cfg, world):
        out += step.outputs(run_dir, world)
    return out


def step_lines(cfg: Config, world: int) -> list[str]:
    return [f"  {step.name:<16} {step.describe(world)}" for step in plan_steps(cfg, world)]


def format_plan(p: dict[str, Any]) -> str:
    m, d = p["model"], p["data"]
    lines = [f"dry run of {p['config']} (nothing trained, nothing written)",
             f"run directory: {p['run_dir']}",
             f"data: {_units(d)}, {d['samples']:,} samples per epoch ({d['source']})",
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
    total = sum(st["samples"] for st in p["stages"])
    lines.append(f"total: {'<=' if any(not st['exact'] for st in p['stages']) else ''}{total:,} samples over "
                 f"{sum(1 for st in p['stages'] if st['steps'])} trained stage(s)")
    lines += p["cuts"]
    lines += ["", "GPU memory per rank (estimate; mcl_dist/training/memory_estimate.py):"] + p["memory"]
    lines += [f"warning: {w}" for w in p["warnings"]]
    lines += [""] + p["hours"]
    lines += ["", f"per rank: embeddings {p['embed_rows']:,} x {m['dim']} fp16 = {_bytes(p['embed_bytes'])}"
              + (f"; k-means working memory ~{_bytes(p['kmeans_bytes'])}" if p["kmeans_bytes"] else ""),
              f"checkpoints: stage {layout.STAGE_CHECKPOINT} {_bytes(m['state_bytes'])} (CLIP: as much again in {layout.OPEN_CLIP}/); "
              f"training checkpoints (model + optimizer, DDP) up to "
              f"{_bytes(max(st['train_checkpoint_bytes'] for st in p['stages']))} each; "
              f"integrated model {_bytes(m['state_bytes'] * len(p['stages']))}",
              ""] + [f"note: {n}" for n in p["notes"]] + ["steps:"] + p["steps"]
    if p["synthetic"]:
        lines.append(f"synthetic data (shards, MMVP folder, zero_shot.json) made on first use under {p['synthetic']}")
    if p["tensorboard"]:
        tb = layout.folder(layout.tb_dir(layout.stage_name("s")))
        lines.append(f"tensorboard: tensorboard --logdir {p['run_dir']}   ({tb})")
    lines += ["launch:"] + p["launch"]
    lines += ["paths written:"] + [f"  {path}" for path in p["paths"]]
    return "\n".join(lines)


def dry_run(config_path: str, run_dir: str | None, overrides: list[str], world: int | None = None,
            gpu: str | None = None) -> int:
    cfg = load_config(config_path, overrides)
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    run_dir = run_dir or cfg.run_dir or default_run_dir(config_path)
    plan = build_plan(cfg, config_path, run_dir, world, overrides, gpu)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_plan(plan), flush=True)
    return 0
