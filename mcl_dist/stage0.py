"""Stage 0: plain contrastive training on streamed shards (or a pretrained model taken as is)."""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from mcl_dist import distributed as dist_utils
from mcl_dist.config import Config, micro_batch_size
from mcl_dist.data.shards import count_samples
from mcl_dist.data.sources import StreamSource
from mcl_dist.data.streaming import cap_workers
from mcl_dist.io import save_torch
from mcl_dist.models import stage_checkpoint
from mcl_dist.objectives import get_objective
from mcl_dist.train import StageSpec, StageTrainer

log = logging.getLogger("mcl_dist")


def stage_steps(cfg: Config, stage: int, num_samples: int) -> int:
    """Optimizer steps of a stage: max_steps if set, else epochs over the data."""
    st = cfg.stages[stage]
    max_steps = st.max_steps if st.max_steps is not None else cfg.train.max_steps
    if max_steps:
        return max_steps
    epochs = st.epochs if st.epochs is not None else cfg.train.epochs
    steps_per_epoch = max(1, num_samples // cfg.train.global_batch_size)
    return max(1, math.ceil(epochs * steps_per_epoch))


def train_stage0(cfg: Config, urls: list[str], stage_dir: str, fingerprint: str,
                 kill_after_step: int = 0) -> dict[str, Any]:
    info = dist_utils.info()
    st = cfg.stages[0]
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    objective = get_objective(cfg)
    bundle = objective.create_bundle(info.device, pretrained=st.pretrained or None)
    out_path = os.path.join(stage_dir, "checkpoint.pt")
    if st.pretrained:
        log.info("stage 0: using pretrained weights '%s' as stage 0 (no training)", st.pretrained)
        if info.is_main:
            save_torch(stage_checkpoint(bundle["model"], bundle["name"], bundle["config"], stage=0), out_path)
        return {"pretrained": st.pretrained}
    world = info.world_size
    decoder = objective.train_decoder(bundle)
    workers = cap_workers(len(urls), world, cfg.data.workers)
    if workers < cfg.data.workers and info.is_main:
        log.warning("data.workers=%d lowered to %d: %d shards cannot feed %d ranks x %d workers",
                    cfg.data.workers, workers, len(urls), world, cfg.data.workers)
    source = StreamSource(urls, decoder, micro_batch=micro_batch_size(cfg, world), rank=info.rank, world=world,
                          seed=cfg.train.seed, shuffle_buffer=cfg.data.shuffle_buffer, workers=workers)
    num_samples = cfg.data.num_samples or count_samples(urls)
    total = stage_steps(cfg, 0, num_samples)
    lr = st.lr if st.lr is not None else cfg.train.lr
    spec = StageSpec(stage=0, stage_dir=stage_dir, bundle=bundle, source=source, total_steps=total, base_lr=lr,
                     gather=world > 1, fingerprint=fingerprint, kill_after_step=kill_after_step)
    if info.is_main:
        log.info("stage 0: %d steps of %d samples (%d samples per epoch, %d ranks, %d workers each)",
                 total, cfg.train.global_batch_size, num_samples, world, workers)
    final = StageTrainer(cfg, spec).run()
    if info.is_main:
        save_torch(stage_checkpoint(bundle["model"], bundle["name"], bundle["config"], stage=0), out_path)
    dist_utils.barrier()
    return final
