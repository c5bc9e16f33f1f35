"""The bodies of the pipeline's steps (mcl_dist/pipeline.py lists them and records them).

    stage_0/train                                  train_step, streamed shards (or pretrained weights)
    stage_s/embed -> kmeans -> labels -> train     embed_step, kmeans_step, labels_step, train_step
    integrate -> eval -> report                    integrate_step, eval_step, report_step

Every body takes the pipeline (and a training step its fingerprint, which its checkpoints carry)
and returns the outputs the manifest records. Outputs under `<run_dir>/stage_<s>/`: `embed/` (fp16 parts), `kmeans/` (centroids,
assignments, inertia), `labels.npz` (keyed by sample key, tied to the shards by fingerprint),
`checkpoints/`, `checkpoint.pt`, `metrics.jsonl`; then `integrated/model.pt`, `eval/results.json`
and `report.md`.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Any

import numpy as np
import torch

from mcl_dist import data_report
from mcl_dist import distributed as dist_utils
from mcl_dist.config import ConfigError, micro_batch_size, stage_lr, stage_steps
from mcl_dist.data.preflight import DataError
from mcl_dist.data.sampler import EpochPlan
from mcl_dist.data.shards import count_samples, local_path
from mcl_dist.data.sources import PlannedSource, StreamSource
from mcl_dist.data.streaming import cap_workers
from mcl_dist.data.tar_index import build_or_load_index
from mcl_dist.embed import check_parts, embed_shards, embedded_bad, load_share
from mcl_dist.eval.evaluate import evaluate_model
from mcl_dist.files import load_npz, load_torch, read_json, save_npz, save_torch, write_json
from mcl_dist.integrate import save_integrated
from mcl_dist.kmeans import kmeans
from mcl_dist.labels import check_complete, compose_labels, label_stats, load_labels, save_labels
from mcl_dist.metrics import read_metrics
from mcl_dist.models import stage_checkpoint
from mcl_dist.objectives import get_objective
from mcl_dist.report import write_report
from mcl_dist.stop_signal import split_signal
from mcl_dist.train import StageSpec, StageTrainer

log = logging.getLogger("mcl_dist")


def index_dir(pipe) -> str:
    return pipe.cfg.data.index_dir or os.path.join(pipe.run_dir, "index")


def integrated_path(run_dir: str) -> str:
    return os.path.join(run_dir, "integrated", "model.pt")


def shard_paths(pipe) -> list[str]:
    """The run's shards as local paths (the tar index reads files, not URLs)."""
    return [local_path(u) for u in pipe.urls]


def shard_index(pipe, step: str):
    """Rank 0 builds (or validates) the cached tar index first, the others wait outside any
    collective (a long build must not run into dist.timeout_min), then load it."""
    built: dict = {}

    def build() -> bool:
        built["index"] = build_or_load_index(shard_paths(pipe), index_dir(pipe))
        return True

    dist_utils.run_on_main(f"index-{step}", build)
    return built["index"] if built else build_or_load_index(shard_paths(pipe), index_dir(pipe), progress=False)


def _redo_hint(e: Exception, step: str) -> ConfigError:
    return DataError(f"{e}; recover with --redo {step} (it recomputes that step and every later one)")


def load_stage_model(pipe, s: int) -> dict[str, Any]:
    bundle = get_objective(pipe.cfg).create_bundle(pipe.info.device, pretrained="")
    state = load_torch(os.path.join(pipe.stage_dir(s), "checkpoint.pt"))
    bundle["model"].load_state_dict(state["state_dict"])
    return bundle


def remove_stale(directory: str, pattern: str, world: int) -> None:
    """Parts written by an interrupted run with another world size must not be mixed in."""
    if dist_utils.info().is_main:
        for path in glob.glob(os.path.join(directory, pattern)):
            if f"-of{world:04d}." not in os.path.basename(path):
                os.remove(path)
    dist_utils.barrier()


# -- stage s >= 1: embed -> k-means -> labels --------------------------------------------------
def embed_step(pipe, s: int) -> dict:
    remove_stale(os.path.join(pipe.stage_dir(s), "embed"), "part*-of*.npy", pipe.info.world_size)
    bundle = load_stage_model(pipe, s - 1)
    c = pipe.cfg
    return embed_shards(bundle["model"], bundle, pipe.urls, os.path.join(pipe.stage_dir(s), "embed"),
                        mode=c.cluster.embed, batch_size=c.cluster.embed_batch_size, workers=c.data.workers,
                        image_ext=c.data.image_ext, caption_ext=c.data.caption_ext,
                        max_pixels=c.data.max_image_pixels, max_bytes=c.data.max_member_bytes,
                        max_bad_fraction=c.data.max_bad_fraction, need_caption=get_objective(c).captions)


def kmeans_step(pipe, s: int) -> dict:
    c, info = pipe.cfg, pipe.info
    remove_stale(os.path.join(pipe.stage_dir(s), "kmeans"), "assign*-of*.npz", info.world_size)
    check_parts(os.path.join(pipe.stage_dir(s), "embed"), info.world_size, f"stage_{s}/embed")
    feats, keys = load_share(os.path.join(pipe.stage_dir(s), "embed"), info.rank, info.world_size)
    kill_at = pipe.kill_step(f"stage_{s}/kmeans")
    try:
        res = kmeans(torch.from_numpy(np.ascontiguousarray(feats)), c.stages[s].k, iters=c.cluster.kmeans_iters,
                     tol=c.cluster.kmeans_tol, seed=c.train.seed + s, spherical=c.cluster.spherical,
                     backend=c.cluster.backend, device=info.device, progress=info.is_main,
                     on_iter=(lambda it: it == kill_at and dist_utils.kill_launcher()) if kill_at else None)
    except ValueError as e:  # every rank raises the same: NaN/inf rows, k larger than the data, ...
        msg = f"stage_{s}/kmeans on {os.path.join(pipe.stage_dir(s), 'embed')}: {e}"
        raise (_redo_hint(ValueError(msg), f"stage_{s}/embed") if "NaN or inf" in str(e) else DataError(msg)) from None
    out = os.path.join(pipe.stage_dir(s), "kmeans")
    save_npz(os.path.join(out, f"assign{info.rank:04d}-of{info.world_size:04d}.npz"), keys=keys,
             clusters=res.assignments.numpy().astype(np.int32))
    summary = {"k": c.stages[s].k, "inertia": [float(v) for v in res.inertia], "iterations": res.iterations,
               "converged": bool(res.converged), "sizes": res.sizes.tolist()}
    if info.is_main:
        save_npz(os.path.join(out, "centroids.npz"), centroids=res.centroids.numpy())
        write_json(summary, os.path.join(out, "kmeans.json"))
    return {"iterations": res.iterations, "final_inertia": summary["inertia"][-1] if res.inertia else None}


def _clusters_in_index_order(pipe, s: int, index) -> np.ndarray:
    out = np.full(len(index), -1, np.int64)
    for path in sorted(glob.glob(os.path.join(pipe.stage_dir(s), "kmeans", "assign*-of*.npz"))):
        part = load_npz(path)
        where = index.key_to_index(part["keys"])
        known = where >= 0
        out[where[known]] = part["clusters"][known]
    return out


def labels_step(pipe, s: int) -> dict:
    """Rank 0 only (a main_only step): the others wait outside any collective."""
    index = build_or_load_index(shard_paths(pipe), index_dir(pipe))
    path = os.path.join(pipe.stage_dir(s), "labels.npz")
    rows, current = [], np.zeros(len(index), np.int64)  # stage 1 splits the root label
    if s > 1:
        try:
            prev = load_labels(os.path.join(pipe.stage_dir(s - 1), "labels.npz"), index.fingerprint())
        except (ValueError, RuntimeError, FileNotFoundError) as e:
            raise _redo_hint(e, f"stage_{s - 1}/labels") from None
        rows, current = list(prev["cluster_ids"]), prev["labels"]
    rows.append(_clusters_in_index_order(pipe, s, index))
    check_complete(rows[-1], embedded_bad(pipe.stage_dir(s)), os.path.join(pipe.stage_dir(s), "kmeans"), f"stage_{s}/embed")
    labels = compose_labels(rows, min_label_size=pipe.cfg.cluster.min_label_size)
    save_labels(path, index.keys, labels, np.stack(rows), index.fingerprint())
    signal = split_signal(current, rows[-1], pipe.cfg.cluster.min_label_size)
    stats = {**label_stats(labels), **{f"signal/{k}": v for k, v in signal.items()}}
    log.info("stage %d labels: %s", s, stats)
    return stats


# -- training: stage 0 streams the shards, later stages follow the cluster plan ----------------
def init_weights(pipe, s: int) -> dict[str, Any]:
    """Stage 0: the run's starting weights (or the pretrained ones). Later stages, by `init`:
    previous = stage s-1's weights; base = stage 0's starting weights; scratch = a fresh init."""
    c, st = pipe.cfg, pipe.cfg.stages[s]
    objective = get_objective(c)
    if s == 0 or st.init == "base":
        torch.manual_seed(c.train.seed)  # identical initial weights on every rank, and in every base stage
        bundle = objective.create_bundle(pipe.info.device, pretrained=c.stages[0].pretrained or None)
    elif st.init == "previous":
        bundle = load_stage_model(pipe, s - 1)
    else:
        torch.manual_seed(c.train.seed + 1000 * s)
        bundle = objective.create_bundle(pipe.info.device, pretrained="")
    if s > 0:
        objective.lock(bundle["model"], st)  # the stage's own lock_image / lock_text, if it sets them
    return bundle


def _stream_source(pipe, decoder) -> tuple[StreamSource, int]:
    """Stage 0's source: the shards streamed in a shuffled order, every rank its own share."""
    c, info, world = pipe.cfg, pipe.info, pipe.info.world_size
    workers = cap_workers(len(pipe.urls), world, c.data.workers)
    if workers < c.data.workers and info.is_main:
        log.warning("data.workers=%d lowered to %d: %d shards cannot feed %d ranks x %d workers",
                    c.data.workers, workers, len(pipe.urls), world, c.data.workers)
    source = StreamSource(pipe.urls, decoder, micro_batch=micro_batch_size(c, world), rank=info.rank, world=world,
                          seed=c.train.seed, shuffle_buffer=c.data.shuffle_buffer, workers=workers)
    num_samples = c.data.num_samples or count_samples(pipe.urls)
    total = stage_steps(c, 0, num_samples)
    if info.is_main:
        log.info("stage 0: %d steps of %d samples (%d samples per epoch, %d ranks, %d workers each)",
                 total, c.train.global_batch_size, num_samples, world, workers)
    return source, total


def _stage_labels(pipe, s: int) -> tuple[Any, np.ndarray]:
    """The shard index and stage s's labels in index order; read before any weights are loaded."""
    index = shard_index(pipe, f"stage_{s}/train")
    try:
        labels = load_labels(os.path.join(pipe.stage_dir(s), "labels.npz"), index.fingerprint())["labels"]
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # labels of other shards, damaged file
        raise _redo_hint(e, f"stage_{s}/labels") from None
    return index, labels


def _planned_source(pipe, s: int, index, labels: np.ndarray, decoder) -> tuple[PlannedSource, int, EpochPlan]:
    """A later stage's source: batches drawn group by group from the stage's labels."""
    c, info, st = pipe.cfg, pipe.info, pipe.cfg.stages[s]
    source = PlannedSource(index, labels, decoder, micro_batch=micro_batch_size(c, info.world_size),
                           accum=c.train.accum_freq, world=info.world_size, rank=info.rank,
                           group_size=st.group_size, seed=c.train.seed + s, workers=c.data.workers)
    plan = source.plan(0)
    if plan.num_steps == 0:
        raise ConfigError(f"stage {s}: the cluster plan has no full step ({plan.stats}); lower "
                          f"stages.{s}.group_size or train.global_batch_size, or lower stages.{s}.k")
    total = stage_steps(c, s, plan.num_steps * c.train.global_batch_size)
    if info.is_main:
        log.info("stage %d: %d steps; plan of epoch 0: %s", s, total, plan.stats)
    return source, total, plan


def train_step(pipe, s: int, fp: str) -> dict:
    """Train stage s and save its checkpoint (`stages.0.pretrained`: taken as stage 0 as is)."""
    c, info = pipe.cfg, pipe.info
    index, labels = _stage_labels(pipe, s) if s > 0 else (None, None)
    bundle = init_weights(pipe, s)
    out_path = os.path.join(pipe.stage_dir(s), "checkpoint.pt")
    result: dict[str, Any] = {"checkpoint": out_path}
    if s == 0 and c.stages[0].pretrained:
        log.info("stage 0: using pretrained weights '%s' as stage 0 (no training)", c.stages[0].pretrained)
        result["final"] = {"pretrained": c.stages[0].pretrained}
    else:
        decoder = get_objective(c).train_decoder(bundle)
        if s == 0:  # stage 0 gathers features whenever there are other ranks
            source, total = _stream_source(pipe, decoder)
            gather, plan = info.world_size > 1, {}
        else:  # a later stage only when one label group spans the ranks
            source, total, epoch_plan = _planned_source(pipe, s, index, labels, decoder)
            gather, plan = epoch_plan.mode == "global", epoch_plan.stats
        spec = StageSpec(stage=s, stage_dir=pipe.stage_dir(s), bundle=bundle, source=source, total_steps=total,
                         base_lr=stage_lr(c, s), gather=gather, fingerprint=fp,
                         extra_metrics={f"plan/{k}": float(v) for k, v in plan.items() if isinstance(v, (int, float))},
                         kill_after_step=pipe.kill_step(f"stage_{s}/train"))
        result["final"] = StageTrainer(c, spec).run()
        if s > 0:
            result["plan"] = plan
    if info.is_main:
        save_torch(stage_checkpoint(bundle["model"], bundle["name"], bundle["config"], stage=s), out_path)
    dist_utils.barrier()
    return result


# -- the end of a run -----------------------------------------------------------------------------
def integrate_step(pipe) -> dict:
    """Rank 0 only: the stages' checkpoints concatenated into one model."""
    names, states, config = [], [], None
    for s in range(len(pipe.cfg.stages)):
        ck = load_torch(os.path.join(pipe.stage_dir(s), "checkpoint.pt"))
        names.append(ck["model_name"])
        states.append(ck["state_dict"])
        config = ck.get("model_config", config)
    save_integrated(integrated_path(pipe.run_dir), names, states, None, config)
    return {"model": integrated_path(pipe.run_dir)}


def eval_step(pipe) -> dict:
    """Rank 0 only: every stage and the integrated model (evaluation sets are small)."""
    models = [(f"stage_{s}", os.path.join(pipe.stage_dir(s), "checkpoint.pt")) for s in range(len(pipe.cfg.stages))]
    results: dict[str, Any] = {}
    for i, (name, path) in enumerate(models + [("integrated", integrated_path(pipe.run_dir))]):
        log.info("evaluating %s", name)
        results[name] = evaluate_model(path, pipe.cfg, pipe.urls, device=pipe.info.device)
        if pipe.cfg.debug.kill_at == f"eval:{i + 1}":  # tests: killed half-way through evaluation
            dist_utils.kill_job_now()
    write_json(results, os.path.join(pipe.run_dir, "eval", "results.json"))
    data_report.record(pipe.run_dir, "eval", data_report.counted(results["integrated"].get("skipped", {})))
    return {"results": os.path.join(pipe.run_dir, "eval", "results.json")}


def _label_stats(pipe, s: int) -> dict:
    """What the labels step recorded, and how the sampler used the labels (DESIGN section 7)."""
    rec = pipe.manifest.step(f"stage_{s}/labels")
    if not rec:
        return {}
    stats = dict(rec.get("outputs", {}))
    plan = (pipe.manifest.step(f"stage_{s}/train") or {}).get("outputs", {}).get("plan", {})
    for k in ("short_group_share", "groups_per_micro_batch", "skipped_singletons", "dropped"):
        if k in plan:
            stats[k] = round(plan[k], 3) if isinstance(plan[k], float) else plan[k]
    return stats


def report_step(pipe) -> dict:
    """Rank 0 only: report.md from the metrics, the cluster sizes, the labels and the evaluation."""
    stages = range(len(pipe.cfg.stages))
    curves = {s: [(r["step"], r["loss"]) for r in read_metrics(pipe.stage_dir(s)) if "loss" in r] for s in stages}
    sizes = {}
    for s in stages:
        km = os.path.join(pipe.stage_dir(s), "kmeans", "kmeans.json")
        if os.path.exists(km):
            sizes[s] = read_json(km)["sizes"]
    labelled = {s: st for s in stages if (st := _label_stats(pipe, s))}
    res_path = os.path.join(pipe.run_dir, "eval", "results.json")
    results = read_json(res_path) if os.path.exists(res_path) else {}
    return {"report": write_report(pipe.run_dir, results, curves, sizes, labelled, data_report.load(pipe.run_dir))}
