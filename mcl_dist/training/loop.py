"""One stage's training loop (stage 0 and every MCL stage alike).

The loop is deliberately plain: draw `accum_freq` micro-batches, forward + label-aware
contrastive loss + backward on each, guard against non-finite losses, step, log, checkpoint.
Everything specific to a stage (data source, labels, whether features are gathered) comes in
through `StageSpec`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from mcl_dist.data import data_report

from mcl_dist.core import layout

from mcl_dist.config.schema import Config
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core.progress import progress
from mcl_dist.data.sampler import group_purity, write_batch_record
from mcl_dist.data.streaming import BadSampleMonitor
from mcl_dist.model.open_clip_models import stage_checkpoint, unwrap
from mcl_dist.objectives import get_objective
from mcl_dist.training import checkpoint
from mcl_dist.training.engine import build_engine
from mcl_dist.training.loggers import open_reporters
from mcl_dist.training.metrics_log import MetricsLogger, truncate_after

log = logging.getLogger("mcl_dist")


class TrainingError(RuntimeError):
    """Training stopped on purpose (non-finite loss, too many bad samples)."""


@dataclass
class StageSpec:
    stage: int
    run_dir: str
    bundle: dict  # the objective's create_bundle() output
    source: Any  # StreamSource or PlannedSource
    total_steps: int
    base_lr: float
    gather: bool  # all-gather features for the loss (negatives live on other ranks)
    fingerprint: str
    extra_metrics: dict = field(default_factory=dict)
    kill_after_step: int = 0  # tests: SIGKILL the job right after this step's checkpoint
    log_batches: bool = False  # debug.log_batches: each rank's batches in batches/rank<r>.jsonl

    @property
    def stage_dir(self) -> str:
        return layout.stage_dir(self.run_dir, self.stage)

    @property
    def step(self) -> str:
        return layout.step_name("train", self.stage)


class StageTrainer:
    def __init__(self, cfg: Config, spec: StageSpec):
        self.cfg, self.spec = cfg, spec
        self.info = dist_utils.info()
        self.device = self.info.device
        self.model = spec.bundle["model"]
        self.objective = get_objective(cfg)
        self.engine = build_engine(self.model, cfg.train, self.device, spec.total_steps, spec.base_lr)
        self.monitor = BadSampleMonitor(cfg.data.max_bad_fraction)
        self.metrics = MetricsLogger(spec.stage_dir, enabled=self.info.is_main,
                                     reporters=lambda: open_reporters(cfg, spec.run_dir, spec.stage))
        self.batch_log = None
        if spec.log_batches:
            self.batch_log = layout.batch_log(spec.stage_dir, self.info.rank)
            os.makedirs(os.path.dirname(self.batch_log), exist_ok=True)

    # -- resume ---------------------------------------------------------------------------
    def _resume(self) -> tuple[int, Optional[dict]]:
        state = checkpoint.latest(self.spec.stage_dir, self.spec.fingerprint, self.spec.step)
        if state is None:
            if self.info.is_main:  # a run killed before its first checkpoint left records: it restarts at 0
                truncate_after(self.spec.stage_dir, 0)
            return 0, None
        unwrap(self.model).load_state_dict(state["state_dict"])
        self.engine.load_state_dict(state)
        step = int(state["step"])
        data = state.get("data") or []
        if len(data) != self.info.world_size:
            log.warning("resuming %s at step %d with world size %d (was %d): the data stream restarts "
                        "from its beginning", state["path"], step, self.info.world_size, len(data))
            data_state = None
        else:
            data_state = data[self.info.rank]
            self.monitor.restore(data_state.get("bad_samples"))  # the account goes on, not from zero
        if self.info.is_main:
            log.info("resuming stage %d from %s (step %d)", self.spec.stage, state["path"], step)
            truncate_after(self.spec.stage_dir, step)
        return step, data_state

    def _save(self, step: int) -> None:
        data_states = dist_utils.all_gather_object({**self.spec.source.state(), "bad_samples": self.monitor.summary()})
        engine_state = self.engine.state_dict()
        if not self.info.is_main:
            return
        state = stage_checkpoint(self.model, self.spec.bundle["name"], self.spec.bundle["config"],
                                 step=step, data=data_states, fingerprint=self.spec.fingerprint,
                                 stage=self.spec.stage, **engine_state)
        checkpoint.save(self.spec.stage_dir, step, state, self.cfg.train.keep_checkpoints)

    # -- one optimizer step ----------------------------------------------------------------
    def _next(self, it) -> tuple[dict, float]:
        t0 = time.perf_counter()
        while True:
            try:
                batch = next(it)
            except StopIteration:  # every worker read a whole pass without one usable sample
                urls = getattr(self.spec.source, "urls", [])
                mine = len(urls[self.info.rank::self.info.world_size])
                raise TrainingError(f"stage {self.spec.stage}: {self.monitor.no_sample_message(mine, len(urls))}") from None
            self.monitor.update(batch["meta"], len(batch["key"]))
            if batch["key"]:
                return batch, time.perf_counter() - t0

    def _step(self, it, step: int) -> dict[str, float]:
        accum = self.cfg.train.accum_freq
        total_loss, data_time, n, purity = 0.0, 0.0, 0, 0.0
        self.model.train()
        for micro in range(accum):
            batch, wait = self._next(it)
            data_time += wait
            labels = batch.get("labels")
            labels = labels.to(self.device) if labels is not None else None
            if self.batch_log:
                write_batch_record(self.batch_log, step, micro, dist_utils.rank(), batch)
            with self.engine.accumulating(last=micro == accum - 1):
                loss = self.objective.loss(self.engine, batch, self.device, labels, self.spec.gather)
                self.engine.backward(loss / accum)
            total_loss += loss.item() / accum
            n += len(batch["key"])
            purity += group_purity(batch.get("labels"), batch.get("groups")) / accum
        if dist_utils.any_rank(not math.isfinite(total_loss)):
            raise TrainingError(
                f"stage {self.spec.stage}: non-finite loss at step {step} (this rank: {total_loss}); "
                f"stopping instead of training on. Lower train.lr (now {self.spec.base_lr}) or set "
                f"train.grad_clip_norm; the last good checkpoint is in {layout.checkpoint_dir(self.spec.stage_dir)}")
        grad_norm = self.engine.step()
        return {"loss": total_loss, "data_time": data_time, "samples": n, "grad_norm": grad_norm,
                "purity": purity}

    def _check_bad_samples(self) -> dict:
        """Sum the counts over ranks with one small all-reduce; gather the per-shard details
        (a pickled all_gather) only when the share is over the limit and a message is due."""
        m = self.monitor
        counts = torch.tensor([float(m.seen), float(m.bad), float(m.lost)], device=dist_utils.comm_device())
        seen, bad, lost = dist_utils.all_reduce_sum(counts).tolist()
        total = {"seen": int(seen), "bad": int(bad), "lost": int(lost)}
        if self.monitor.check({**total, "shards": None, "damaged": None, "reasons": {}}, counts_only=True):
            total = self.monitor.merge(dist_utils.all_gather_object(self.monitor.summary()))
            raise TrainingError(f"stage {self.spec.stage}: {self.monitor.check(total)}")
        return total

    def run(self) -> dict[str, Any]:
        start, data_state = self._resume()
        total = self.spec.total_steps
        it = iter(self.spec.source.batches(data_state))
        # in a log file: a line at each train.log_every step (with the loss just logged) or each minute
        bar = progress(total, initial=start, enabled=self.info.is_main, desc=f"stage {self.spec.stage}",
                       unit="step", every_n=self.cfg.train.log_every)
        t_last, samples_since, last = time.perf_counter(), 0, {}
        for step in range(start, total):
            stats = self._step(it, step)
            samples_since += stats["samples"] * self.info.world_size
            done = step + 1
            if done % self.cfg.train.log_every == 0 or done == total or done == 1:  # step 1: the start loss
                bad = self._check_bad_samples()
                now = time.perf_counter()
                last = {"loss": stats["loss"], "lr": self.engine.lr, "samples_per_s": samples_since / (now - t_last),
                        # null when not measured (no clipping): the norm would cost a sync every step
                        "data_time": stats["data_time"], "grad_norm": stats["grad_norm"],
                        "label_purity": stats["purity"],
                        "bad_samples": bad["bad"], "seen_samples": bad["seen"], **self.spec.extra_metrics}
                scale = getattr(unwrap(self.model), "logit_scale", None)
                if scale is not None:
                    last["logit_scale"] = float(scale.detach().exp())
                self.metrics.log(done, last)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", sps=f"{last['samples_per_s']:.0f}")
                t_last, samples_since = now, 0
            bar.update(1)
            # tests: debug.kill_at=STAGE/train:N dies right after step N, with step N's checkpoint saved
            # (not at the next checkpoint_every boundary, which stopped :25 after step 40)
            kill = done == self.spec.kill_after_step
            if done % self.cfg.train.checkpoint_every == 0 or done == total or kill:
                self._save(done)
            if kill:
                dist_utils.kill_launcher()
        bar.close()
        total = self.monitor.merge(dist_utils.all_gather_object(self.monitor.summary()))
        if self.info.is_main:
            data_report.record(self.spec.run_dir, self.spec.step, data_report.stream_entry(total))
        self.metrics.close()
        self.engine.finish()  # the stage is over: the pipeline saves the (plain) model itself next
        return last
