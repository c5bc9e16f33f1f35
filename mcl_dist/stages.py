"""One MCL stage s >= 1: embed with stage s-1 -> k-means -> pseudo-labels -> train.

Outputs under `<run_dir>/stage_<s>/`: `embed/` (fp16 parts), `kmeans/` (centroids, assignments,
inertia), `labels.npz` (keyed by sample key, tied to the shards by fingerprint), `checkpoints/`,
`checkpoint.pt`, `metrics.jsonl`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from mcl_dist import distributed as dist_utils
from mcl_dist.config import ConfigError, micro_batch_size
from mcl_dist.io import load_npz, load_torch, save_npz, save_torch, write_json
from mcl_dist.models import stage_checkpoint
from mcl_dist.objectives import get_objective
from mcl_dist.pipeline import kill_step

log = logging.getLogger("mcl_dist")


def index_dir(pipe) -> str:
    return pipe.cfg.data.index_dir or os.path.join(pipe.run_dir, "index")


def _paths(pipe) -> list[str]:
    return [u[len("file://"):] if u.startswith("file://") else u for u in pipe.urls]


def shard_index(pipe, step: str):
    """Rank 0 builds (or validates) the cached tar index first, the others wait outside any
    collective (a long build must not run into dist.timeout_min), then load it."""
    from mcl_dist.data.tar_index import build_or_load_index

    built: dict = {}

    def build() -> bool:
        built["index"] = build_or_load_index(_paths(pipe), index_dir(pipe))
        return True

    dist_utils.run_on_main(f"index-{step}", build)
    return built["index"] if built else build_or_load_index(_paths(pipe), index_dir(pipe), progress=False)


def _redo_hint(e: Exception, step: str) -> ConfigError:
    from mcl_dist.data.preflight import DataError

    return DataError(f"{e}; recover with --redo {step} (it recomputes that step and every later one)")


def load_stage_model(pipe, s: int) -> dict[str, Any]:
    bundle = get_objective(pipe.cfg).create_bundle(pipe.info.device, pretrained="")
    state = load_torch(os.path.join(pipe.stage_dir(s), "checkpoint.pt"))
    bundle["model"].load_state_dict(state["state_dict"])
    return bundle


# -- steps ---------------------------------------------------------------------------------
def remove_stale(directory: str, pattern: str, world: int) -> None:
    """Parts written by an interrupted run with another world size must not be mixed in."""
    import glob

    if dist_utils.info().is_main:
        for path in glob.glob(os.path.join(directory, pattern)):
            if f"-of{world:04d}." not in os.path.basename(path):
                os.remove(path)
    dist_utils.barrier()


def embed_step(pipe, s: int) -> dict:
    from mcl_dist.embed import embed_shards

    remove_stale(os.path.join(pipe.stage_dir(s), "embed"), "part*-of*.npy", pipe.info.world_size)

    bundle = load_stage_model(pipe, s - 1)
    c = pipe.cfg
    return embed_shards(bundle["model"], bundle, pipe.urls, os.path.join(pipe.stage_dir(s), "embed"),
                        mode=c.cluster.embed, batch_size=c.cluster.embed_batch_size, workers=c.data.workers,
                        image_ext=c.data.image_ext, caption_ext=c.data.caption_ext,
                        max_pixels=c.data.max_image_pixels, max_bytes=c.data.max_member_bytes)


def kmeans_step(pipe, s: int) -> dict:
    from mcl_dist.embed import load_share
    from mcl_dist.kmeans import kmeans

    c, info = pipe.cfg, pipe.info
    remove_stale(os.path.join(pipe.stage_dir(s), "kmeans"), "assign*-of*.npz", info.world_size)
    feats, keys = load_share(os.path.join(pipe.stage_dir(s), "embed"), info.rank, info.world_size)
    kill_at = kill_step(c, f"stage_{s}/kmeans")
    try:
        res = kmeans(torch.from_numpy(np.ascontiguousarray(feats)), c.stages[s].k, iters=c.cluster.kmeans_iters,
                     tol=c.cluster.kmeans_tol, seed=c.train.seed + s, spherical=c.cluster.spherical,
                     backend=c.cluster.backend, device=info.device, progress=info.is_main,
                     on_iter=(lambda it: it == kill_at and dist_utils.kill_launcher()) if kill_at else None)
    except ValueError as e:  # every rank raises the same: NaN/inf rows, k larger than the data, ...
        from mcl_dist.data.preflight import DataError

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
    import glob

    out = np.full(len(index), -1, np.int64)
    for path in sorted(glob.glob(os.path.join(pipe.stage_dir(s), "kmeans", "assign*-of*.npz"))):
        part = load_npz(path)
        where = index.key_to_index(part["keys"])
        known = where >= 0
        out[where[known]] = part["clusters"][known]
    return out


def labels_step(pipe, s: int) -> dict:
    """Rank 0 only (a main_only step): the others wait outside any collective."""
    from mcl_dist.data.tar_index import build_or_load_index
    from mcl_dist.labels import compose_labels, label_stats, load_labels, save_labels
    from mcl_dist.stop_signal import split_signal

    index = build_or_load_index(_paths(pipe), index_dir(pipe))
    path = os.path.join(pipe.stage_dir(s), "labels.npz")
    rows, current = [], np.zeros(len(index), np.int64)  # stage 1 splits the root label
    if s > 1:
        try:
            prev = load_labels(os.path.join(pipe.stage_dir(s - 1), "labels.npz"), index.fingerprint())
        except (ValueError, RuntimeError, FileNotFoundError) as e:
            raise _redo_hint(e, f"stage_{s - 1}/labels") from None
        rows, current = list(prev["cluster_ids"]), prev["labels"]
    rows.append(_clusters_in_index_order(pipe, s, index))
    labels = compose_labels(rows, min_label_size=pipe.cfg.cluster.min_label_size)
    save_labels(path, index.keys, labels, np.stack(rows), index.fingerprint())
    signal = split_signal(current, rows[-1], pipe.cfg.cluster.min_label_size)
    stats = {**label_stats(labels), **{f"signal/{k}": v for k, v in signal.items()}}
    log.info("stage %d labels: %s", s, stats)
    return stats


def init_weights(pipe, s: int) -> dict[str, Any]:
    """previous: stage s-1's weights; base: the run's starting weights; scratch: a fresh init."""
    c, st = pipe.cfg, pipe.cfg.stages[s]
    objective = get_objective(c)
    if st.init == "previous":
        bundle = load_stage_model(pipe, s - 1)
    elif st.init == "base":
        torch.manual_seed(c.train.seed)  # the same initial weights stage 0 started from
        bundle = objective.create_bundle(pipe.info.device, pretrained=c.stages[0].pretrained or None)
    else:
        torch.manual_seed(c.train.seed + 1000 * s)
        bundle = objective.create_bundle(pipe.info.device, pretrained="")
    objective.lock(bundle["model"], st)
    return bundle


def train_step(pipe, s: int, fp: str) -> dict:
    from mcl_dist.data.sources import PlannedSource
    from mcl_dist.labels import load_labels
    from mcl_dist.stage0 import stage_steps
    from mcl_dist.train import StageSpec, StageTrainer

    c, info, st = pipe.cfg, pipe.info, pipe.cfg.stages[s]
    index = shard_index(pipe, f"stage_{s}/train")
    try:
        labels = load_labels(os.path.join(pipe.stage_dir(s), "labels.npz"), index.fingerprint())["labels"]
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # labels of other shards, damaged file
        raise _redo_hint(e, f"stage_{s}/labels") from None
    bundle = init_weights(pipe, s)
    decoder = get_objective(c).train_decoder(bundle)
    micro = micro_batch_size(c, info.world_size)
    source = PlannedSource(index, labels, decoder, micro_batch=micro, accum=c.train.accum_freq,
                           world=info.world_size, rank=info.rank, group_size=st.group_size,
                           seed=c.train.seed + s, workers=c.data.workers)
    plan = source.plan(0)
    if plan.num_steps == 0:
        raise ConfigError(f"stage {s}: the cluster plan has no full step ({plan.stats}); lower "
                          f"stages.{s}.group_size or train.global_batch_size, or lower stages.{s}.k")
    total = stage_steps(c, s, plan.num_steps * c.train.global_batch_size)
    plan_stats = {f"plan/{k}": float(v) for k, v in plan.stats.items() if isinstance(v, (int, float))}
    if info.is_main:
        log.info("stage %d: %d steps; plan of epoch 0: %s", s, total, plan.stats)
    spec = StageSpec(stage=s, stage_dir=pipe.stage_dir(s), bundle=bundle, source=source, total_steps=total,
                     base_lr=st.lr if st.lr is not None else c.train.lr,
                     gather=st.group_size > micro, fingerprint=fp, extra_metrics=plan_stats,
                     kill_after_step=kill_step(c, f"stage_{s}/train"))
    final = StageTrainer(c, spec).run()
    if info.is_main:
        save_torch(stage_checkpoint(bundle["model"], bundle["name"], bundle["config"], stage=s),
                   os.path.join(pipe.stage_dir(s), "checkpoint.pt"))
    dist_utils.barrier()
    return {"final": final, "plan": plan.stats, "checkpoint": os.path.join(pipe.stage_dir(s), "checkpoint.pt")}


def run_mcl_stage(pipe, s: int) -> None:
    c = pipe.cfg
    prev_train = f"stage_{s - 1}/train"
    embed_set = {"upstream": [pipe.fps[prev_train]], "data": pipe.data_fp, "mode": c.cluster.embed}
    pipe.run_step(f"stage_{s}/embed", embed_set, lambda: embed_step(pipe, s))
    km_set = {"upstream": [pipe.fps[f"stage_{s}/embed"]], "k": c.stages[s].k, "iters": c.cluster.kmeans_iters,
              "tol": c.cluster.kmeans_tol, "spherical": c.cluster.spherical, "backend": c.cluster.backend,
              "seed": c.train.seed}
    pipe.run_step(f"stage_{s}/kmeans", km_set, lambda: kmeans_step(pipe, s))
    up = [pipe.fps[f"stage_{s}/kmeans"]] + ([pipe.fps[f"stage_{s - 1}/labels"]] if s > 1 else [])
    lab_set = {"upstream": up, "min_label_size": c.cluster.min_label_size}
    pipe.run_step(f"stage_{s}/labels", lab_set, lambda: labels_step(pipe, s), main_only=True)
    train_set = pipe.train_settings(s, [f"stage_{s}/labels", prev_train])
    from mcl_dist.manifest import fingerprint

    fp = fingerprint(train_set)
    pipe.run_step(f"stage_{s}/train", train_set, lambda: train_step(pipe, s, fp))
