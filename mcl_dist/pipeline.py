"""The whole MCL run as a list of resumable steps recorded in the manifest.

    stage_0/train
    stage_s/embed -> stage_s/kmeans -> stage_s/labels -> stage_s/train      (s = 1 .. S-1)
    integrate -> eval -> report

Every rank walks the same list. A step that the manifest records as done with the same
fingerprint is skipped; one whose settings changed is refused; an interrupted one is redone
(training steps resume from their last checkpoint).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

from mcl_dist import distributed as dist_utils
from mcl_dist.config import Config, check_world, load_config, save_config
from mcl_dist.data.shards import expand_urls, is_local, local_path
from mcl_dist.manifest import Manifest, fingerprint

log = logging.getLogger("mcl_dist")

# settings that change how a run is logged or checkpointed, not what it computes
_NOT_RESULTS = {"log_every", "checkpoint_every", "keep_checkpoints", "workers", "index_dir", "embed_batch_size"}


def _results_only(section: Any) -> dict:
    d = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    return {k: v for k, v in d.items() if k not in _NOT_RESULTS}


def data_identity(urls: list[str]) -> list:
    """Shard names plus size and mtime where local: a rewritten shard changes the fingerprint."""
    out = []
    for u in urls:
        if is_local(u):
            st = os.stat(local_path(u))
            out.append([os.path.abspath(local_path(u)), st.st_size, st.st_mtime_ns])
        else:
            out.append([u])
    return out


def resolve_data(cfg: Config) -> list[str]:
    """Make the synthetic demo data on first use (rank 0 only), then expand the shard list."""
    if cfg.data.synthetic:
        if dist_utils.info().is_main:
            from mcl_dist.synthetic import ensure_demo_data

            paths = ensure_demo_data(cfg.data.synthetic_dir, n_train=cfg.data.synthetic_train,
                                     n_test=cfg.data.synthetic_test, seed=0,
                                     samples_per_shard=cfg.data.synthetic_samples_per_shard)
        else:
            paths = None
        paths = dist_utils.broadcast_object(paths)
        cfg.data.train_shards = cfg.data.train_shards or paths["train"]
        cfg.eval.test_shards = cfg.eval.test_shards or paths["test"]
        cfg.eval.mmvp_dir = cfg.eval.mmvp_dir or paths["mmvp"]
        cfg.eval.zero_shot_classes = cfg.eval.zero_shot_classes or paths.get("zero_shot", "")
        cfg.eval.label_fields = cfg.eval.label_fields or list(paths.get("label_fields", []))
    return expand_urls(cfg.data.train_shards)


class Pipeline:
    def __init__(self, cfg: Config, run_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        self.info = dist_utils.info()
        self.urls = resolve_data(cfg)
        self.manifest = Manifest(run_dir)
        self.data_fp = fingerprint({"shards": data_identity(self.urls)})
        self.fps: dict[str, str] = {}

    def stage_dir(self, s: int) -> str:
        return os.path.join(self.run_dir, f"stage_{s}")

    def run_step(self, name: str, settings: dict, fn: Callable[[], dict]) -> dict:
        """Run `fn` unless the manifest has it done with these settings; all ranks agree."""
        self.fps[name] = fingerprint(settings)
        self.manifest = Manifest(self.run_dir)  # re-read: rank 0 may have written it
        if self.manifest.is_done(name, settings):
            log.info("step %s: done already, skipped", name)
            return self.manifest.step(name)["outputs"]
        dist_utils.barrier()
        if self.info.is_main:
            self.manifest.start(name, settings)
        log.info("step %s: running", name)
        outputs = fn() or {}
        if self.cfg.debug.kill_at == name:
            dist_utils.kill_launcher()
        dist_utils.barrier()
        if self.info.is_main:
            self.manifest.finish(name, outputs)
        dist_utils.barrier()
        return outputs

    # -- settings per step (what each step's result depends on) ---------------------------
    def train_settings(self, s: int, upstream: list[str]) -> dict:
        c = self.cfg
        return {"data": self.data_fp, "data_cfg": _results_only(c.data), "model": _results_only(c.model),
                "train": _results_only(c.train), "stage": _results_only(c.stages[s]),
                "world_size": self.info.world_size, "upstream": [self.fps[u] for u in upstream]}

    def run(self) -> int:
        from mcl_dist.stage0 import train_stage0

        settings = self.train_settings(0, [])
        fp = fingerprint(settings)
        self.run_step("stage_0/train", settings,
                      lambda: {"final": train_stage0(self.cfg, self.urls, self.stage_dir(0), fp,
                                                     kill_after_step=kill_step(self.cfg, "stage_0/train")),
                               "checkpoint": os.path.join(self.stage_dir(0), "checkpoint.pt")})
        for s in range(1, len(self.cfg.stages)):
            from mcl_dist.stages import run_mcl_stage

            run_mcl_stage(self, s)
        if len(self.cfg.stages) > 0:
            from mcl_dist.finish import finish_run

            finish_run(self)
        return 0


def kill_step(cfg: Config, step: str) -> int:
    """debug.kill_at="stage_1/train:3" -> 3 for that step, else 0."""
    name, _, at = cfg.debug.kill_at.partition(":")
    return int(at) if name == step and at.isdigit() else 0


def default_run_dir(config_path: str) -> str:
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def run_pipeline(config_path: str, run_dir: str | None, overrides: list[str]) -> int:
    cfg = load_config(config_path, overrides)
    info = dist_utils.init_distributed()
    check_world(cfg, info.world_size, config_path)
    run_dir = run_dir or cfg.run_dir or default_run_dir(config_path)
    cfg.run_dir = run_dir
    if info.is_main:
        os.makedirs(run_dir, exist_ok=True)
    pipe = Pipeline(cfg, run_dir)
    if info.is_main:
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
        log.info("run directory: %s (%d shards, world size %d, device %s)", run_dir, len(pipe.urls),
                 info.world_size, info.device)
    try:
        return pipe.run()
    finally:
        dist_utils.destroy()
