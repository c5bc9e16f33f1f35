"""stage_s/train: one stage's training. Stage 0 streams the shards (or takes pretrained weights);
later stages draw the batches the cluster-bucketed planner makes from the stage's labels.

Writes `stage_s/checkpoints/step_*.pt` (the last few), `metrics.jsonl`, `tb/` (train.report_to
tensorboard), `batches/` (debug.log_batches), the stage checkpoint `checkpoint.pt` (open_clip's
'state_dict' layout, read by mcl_dist and by resume) and, for open_clip objectives, the same weights
as the local-dir folder `open_clip/` that open_clip builds exactly as trained, QuickGELU included
(mcl_dist/model/open_clip_dir.py); `writes` says which, for `outputs()` and for the trainer alike (paths:
mcl_dist/core/layout.py).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mcl_dist.core import distributed as dist_utils
from mcl_dist.core import layout
from mcl_dist.model import open_clip_dir
from mcl_dist.run import verify
from mcl_dist.config.schema import (ConfigError, micro_batch_size, stage_epochs, stage_max_steps, stage_peak_lr,
                             stage_steps)
from mcl_dist.clustering.pseudo_labels import load_labels
from mcl_dist.core.files import save_torch
from mcl_dist.data import group_cut
from mcl_dist.data.sampler import EpochPlan, group_layout
from mcl_dist.data.sources import PlannedSource, StreamSource
from mcl_dist.data.streaming import cap_workers
from mcl_dist.model.open_clip_models import stage_checkpoint
from mcl_dist.objectives import get_objective
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step import StageStep
from mcl_dist.steps.step_helpers import load_stage_model, redo_hint
from mcl_dist.training.loggers import parse_report_to
from mcl_dist.training.loop import StageSpec, StageTrainer
from mcl_dist.training.optim import resolve_precision

log = logging.getLogger("mcl_dist")

# settings that change how a run is logged or checkpointed, not what it computes
# (report_to: where metrics go; the integration settings change only the integrate step, which
# records them itself)
NOT_RESULTS = {"log_every", "checkpoint_every", "keep_checkpoints", "workers", "index_dir", "embed_batch_size",
               "report_to", "max_dropped_share", "integration", "integration_weights", "integration_redundant_cka", "integration_samples"}
# how the training data is read: the run's data fingerprint (the data's identity()) covers it, and
# runs made before these settings existed keep their fingerprints
DATA_SOURCE = {"dataset_type", "csv_img_key", "csv_caption_key", "csv_separator"}


def results_only(section: Any) -> dict:
    d = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    return {k: v for k, v in d.items() if k not in NOT_RESULTS}


def init_weights(ctx: RunContext, s: int) -> dict[str, Any]:
    """Stage 0: the run's starting weights (or the pretrained ones). Later stages, by `init`:
    previous = stage s-1's weights; base = stage 0's starting weights; scratch = a fresh init."""
    c, st = ctx.cfg, ctx.cfg.stages[s]
    objective = get_objective(c)
    if s == 0 or st.init == "base":
        torch.manual_seed(c.train.seed)  # identical initial weights on every rank, and in every base stage
        bundle = objective.create_bundle(ctx.info.device, pretrained=c.stages[0].pretrained or None)
    elif st.init == "previous":
        bundle = load_stage_model(ctx, s - 1)
    else:
        torch.manual_seed(c.train.seed + 1000 * s)
        bundle = objective.create_bundle(ctx.info.device, pretrained="")
    if s > 0:
        objective.lock(bundle["model"], st)  # the stage's own lock_image / lock_text, if it sets them
    return bundle


def gathers(cfg, s: int, world: int) -> bool:
    """Whether stage s's loss all-gathers features: stage 0 whenever there are other ranks; a later
    stage only when one label group is the global micro-batch (data/sampler.py group_layout)."""
    if s == 0:
        return world > 1
    return group_layout(cfg.stages[s].group_size, micro_batch_size(cfg, world), world) == "global"


def writes(cfg, s: int) -> dict[str, bool]:
    """Which of a stage's training files the step writes: what outputs() names and the trainer opens."""
    trains = not (s == 0 and cfg.stages[0].pretrained)
    return {"trains": trains, "tb": trains and "tensorboard" in parse_report_to(cfg.train.report_to),
            "batches": trains and bool(cfg.debug.log_batches)}


def stream_source(ctx: RunContext, decoder) -> tuple[StreamSource, int]:
    """Stage 0's source: the data's units (shards, rows) streamed in a shuffled order, every rank its own share."""
    c, info, world, data = ctx.cfg, ctx.info, ctx.info.world_size, ctx.data
    workers = cap_workers(len(data.units), world, c.data.workers)
    if workers < c.data.workers and info.is_main:
        log.warning("data.workers=%d lowered to %d: %d %ss cannot feed %d ranks x %d workers",
                    c.data.workers, workers, len(data.units), data.unit, world, c.data.workers)
    source = StreamSource(data.units, decoder, micro_batch=micro_batch_size(c, world), rank=info.rank, world=world,
                          seed=c.train.seed, shuffle_buffer=c.data.shuffle_buffer, workers=workers, read=data.read)
    num_samples = c.data.num_samples or data.num_samples()
    total = stage_steps(c, 0, num_samples)
    if info.is_main:
        log.info("stage 0: %d steps of %d samples (%d samples per epoch, %d ranks, %d workers each)",
                 total, c.train.global_batch_size, num_samples, world, workers)
    return source, total


def stage_labels(ctx: RunContext, s: int) -> tuple[Any, np.ndarray]:
    """The shard index and stage s's labels in index order; read before any weights are loaded."""
    index = ctx.shard_index(layout.step_name("train", s))
    try:
        labels = load_labels(layout.labels_path(ctx.run_dir, s), index.fingerprint())["labels"]
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # labels of other shards, damaged file
        raise redo_hint(e, layout.step_name("labels", s)) from None
    return index, labels


def planned_source(ctx: RunContext, s: int, index, labels: np.ndarray, decoder) -> tuple[PlannedSource, int, EpochPlan]:
    """A later stage's source: batches drawn group by group from the stage's labels."""
    c, info, st = ctx.cfg, ctx.info, ctx.cfg.stages[s]
    source = PlannedSource(index, labels, decoder, micro_batch=micro_batch_size(c, info.world_size),
                           accum=c.train.accum_freq, world=info.world_size, rank=info.rank,
                           group_size=st.group_size, seed=c.train.seed + s, workers=c.data.workers)
    plan = source.plan(0)
    if plan.num_steps == 0:
        raise ConfigError(f"stage {s}: the cluster plan has no full step ({plan.stats}); lower "
                          f"stages.{s}.group_size or train.global_batch_size, or lower stages.{s}.k")
    drops = group_cut.drop_shares(plan)
    total = stage_steps(c, s, plan.num_steps * c.train.global_batch_size)
    if info.is_main:
        log.info("stage %d: %d steps; plan of epoch 0: %s", s, total, plan.stats)
        log.info(group_cut.describe(s, drops))
    group_cut.check(c, s, drops, info.world_size)
    return source, total, plan


@dataclass
class TrainStep(StageStep):
    kind = "train"

    @property
    def pretrained(self) -> bool:
        return self.stage == 0 and bool(self.cfg.stages[0].pretrained)

    def result_settings(self) -> dict:
        c = self.cfg
        data_cfg = {k: v for k, v in results_only(c.data).items() if k not in DATA_SOURCE}
        return {"data_cfg": data_cfg, "model": results_only(c.model), "train": results_only(c.train),
                "stage": results_only(c.stages[self.stage]), "files": verify.model_files(c)}  # named files by content

    def outputs(self, run_dir: str, world: int) -> list[str]:
        d, w = layout.stage_dir(run_dir, self.stage), writes(self.cfg, self.stage)
        out = [layout.train_checkpoints_glob(d), layout.metrics_path(d)] if w["trains"] else []
        if w["tb"]:  # as configured: a run without the tensorboard extra logs that it writes none
            out.append(layout.folder(layout.tb_dir(d)))
        if w["batches"]:
            out.append(layout.batch_logs_glob(d))
        out.append(layout.stage_checkpoint(run_dir, self.stage))
        if get_objective(self.cfg).open_clip_folder:
            out.append(layout.folder(layout.open_clip_folder(d)))
        return out

    def describe(self, world: int) -> str:
        if self.pretrained:
            return f"pretrained '{self.cfg.stages[0].pretrained}' taken as stage 0 (no training)"
        t = self.cfg.train
        how = "streamed data" if self.stage == 0 else "the cluster plan's batches"
        steps = stage_max_steps(self.cfg, self.stage)
        length = f"{steps} steps" if steps else f"{stage_epochs(self.cfg, self.stage):g} epochs"
        warm = f"{t.warmup_share:g} of the stage" if t.warmup_share > 0 else f"{t.warmup_steps} steps"
        precision = "auto (amp_bf16 on GPU, fp32 on CPU)" if t.precision == "auto" else t.precision
        return (f"{how}, global batch {t.global_batch_size} = micro-batch {micro_batch_size(self.cfg, world)} x "
                f"{world} ranks x accumulation {t.accum_freq}; {length}; {t.lr_scheduler} lr "
                f"{stage_peak_lr(self.cfg, self.stage):g}, warm-up {warm}; precision {precision}; last "
                f"{t.keep_checkpoints} training checkpoints kept")

    def run(self, ctx: RunContext) -> dict:
        """Train stage s and save its checkpoint (`stages.0.pretrained`: taken as stage 0 as is)."""
        c, info, s = ctx.cfg, ctx.info, self.stage
        index, labels = stage_labels(ctx, s) if s > 0 else (None, None)
        bundle = init_weights(ctx, s)
        out_path = layout.stage_checkpoint(ctx.run_dir, s)
        # the report shows what ran, not "auto"
        result: dict[str, Any] = {"checkpoint": out_path, "precision": resolve_precision(c.train.precision, info.device)}
        if self.pretrained:
            log.info("stage 0: using pretrained weights '%s' as stage 0 (no training)", c.stages[0].pretrained)
            result["final"] = {"pretrained": c.stages[0].pretrained}
        else:
            decoder = get_objective(c).train_decoder(bundle)
            if s == 0:
                source, total = stream_source(ctx, decoder)
                plan = {}
            else:
                source, total, epoch_plan = planned_source(ctx, s, index, labels, decoder)
                plan = epoch_plan.stats
            spec = StageSpec(stage=s, run_dir=ctx.run_dir, bundle=bundle, source=source, total_steps=total,
                             base_lr=stage_peak_lr(c, s), gather=gathers(c, s, info.world_size),
                             fingerprint=self.fingerprint,
                             extra_metrics={f"plan/{k}": float(v) for k, v in plan.items() if isinstance(v, (int, float))},
                             kill_after_step=ctx.kill_step(self.name), log_batches=writes(c, s)["batches"])
            result["final"] = StageTrainer(c, spec).run()
            if s > 0:
                result["plan"] = plan
        if info.is_main:
            ck = stage_checkpoint(bundle["model"], bundle["name"], bundle["config"], stage=s)
            save_torch(ck, out_path)
            if get_objective(c).open_clip_folder:  # loads with plain open_clip exactly as trained
                open_clip_dir.write_stage(open_clip_dir.stage_folder(ctx.stage_dir(s)), ck, bundle["model"])
        dist_utils.barrier()
        return result
