"""The steps of a run, one object each (step.py says what a step offers), and the plan that lists them.

    stage_0/train
    stage_s/embed -> stage_s/kmeans -> stage_s/labels -> stage_s/train      (s = 1 .. S-1)
    integrate -> eval -> report

`plan_steps` is the one list: the pipeline runs it, `--redo` removes its `outputs()`, the manifest
records its fingerprints and `--dry-run` prints its paths. Each step's settings are what its result
depends on plus the fingerprints of the steps it reads, so a change upstream changes every later step.
"""
from __future__ import annotations

import os

from mcl_dist.config.schema import Config
from mcl_dist.core import layout
from mcl_dist.data.dataset_types import resolve_type
from mcl_dist.data.shards import expand_urls, is_local
from mcl_dist.run.run_context import index_dir
from mcl_dist.steps.embed_step import EmbedStep
from mcl_dist.steps.evaluate_step import EvalStep
from mcl_dist.steps.integrate_step import IntegrateStep
from mcl_dist.steps.kmeans_step import KMeansStep
from mcl_dist.steps.labels_step import LabelsStep
from mcl_dist.steps.report_step import ReportStep
from mcl_dist.steps.step import Step
from mcl_dist.steps.train_step import TrainStep
from mcl_dist.training.loggers import parse_report_to

__all__ = ["Step", "TrainStep", "EmbedStep", "KMeansStep", "LabelsStep", "IntegrateStep", "EvalStep", "ReportStep",
           "plan_steps", "run_files"]


def plan_steps(cfg: Config, world_size: int, data_fp: str = "") -> list[Step]:
    """Every step of the run in order, each with the settings its result depends on."""
    out: list[Step] = []
    fps: dict[str, str] = {}
    name = layout.step_name

    def add(step: Step, upstream: list[str], **more) -> None:
        step.settings = {"upstream": [fps[u] for u in upstream], **more, **step.result_settings()}
        out.append(step)
        fps[step.name] = step.fingerprint

    add(TrainStep(cfg, stage=0), [], data=data_fp, world_size=world_size)
    for s in range(1, len(cfg.stages)):
        add(EmbedStep(cfg, stage=s), [name("train", s - 1)], data=data_fp)
        add(KMeansStep(cfg, stage=s), [name("embed", s)])
        add(LabelsStep(cfg, stage=s), [name("kmeans", s)] + ([name("labels", s - 1)] if s > 1 else []))
        add(TrainStep(cfg, stage=s), [name("labels", s), name("train", s - 1)], data=data_fp, world_size=world_size)
    add(IntegrateStep(cfg), [name("train", s) for s in range(len(cfg.stages))])
    if cfg.eval.enabled:
        add(EvalStep(cfg), ["integrate"])
    add(ReportStep(cfg), ["integrate"] + (["eval"] if cfg.eval.enabled else []))
    return out


def local_shards(cfg: Config) -> bool:
    """Whether the run's data is local tar shards (the synthetic data is): only those are indexed and
    checked before training (pipeline/runner.py preflight; a CSV is checked too, with no index)."""
    if cfg.data.synthetic and not cfg.data.train_shards:
        return True
    return resolve_type(cfg) == "webdataset" and all(is_local(u) for u in expand_urls(cfg.data.train_shards))


def run_files(cfg: Config, run_dir: str) -> list[str]:
    """What the run writes outside its steps: the resolved config, the manifest, the data check (local
    shards, a CSV), the account of unusable samples (data_report.json: the data check's, training's,
    embedding's and evaluation's entries in one file, so no step's recorded outputs, whose checksums a
    later step's entry would change), the tar index cache (built by the data check of local shards;
    a CSV is checked too but needs no index) and wandb's folder (train.report_to wandb, WANDB_DIR
    unset: every stage's wandb run). The run's lock and the ranks' sync markers live only while a
    launch runs (run/guards.py `release`)."""
    local = local_shards(cfg)
    out = [layout.config_path(run_dir), layout.manifest_path(run_dir)]
    out += [layout.data_check_path(run_dir)] if local or resolve_type(cfg) == "csv" else []
    out.append(layout.data_report_path(run_dir))
    if local:
        out.append(layout.folder(index_dir(cfg, run_dir)))
    if "wandb" in parse_report_to(cfg.train.report_to) and not os.environ.get("WANDB_DIR"):
        out.append(layout.folder(os.path.join(layout.wandb_dir(run_dir), layout.WANDB)))
    return out
