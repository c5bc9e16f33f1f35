"""The steps of a run, one object each (base.py says what a step offers), and the plan that lists them.

    stage_0/train
    stage_s/embed -> stage_s/kmeans -> stage_s/labels -> stage_s/train      (s = 1 .. S-1)
    integrate -> eval -> report

`plan_steps` is the one list: the pipeline runs it, `--redo` removes its `outputs()`, the manifest
records its fingerprints and `--dry-run` prints its paths. Each step's settings are what its result
depends on plus the fingerprints of the steps it reads, so a change upstream changes every later step.
"""
from __future__ import annotations

import os

from mcl_dist.config import Config
from mcl_dist.data.dataset_types import resolve_type
from mcl_dist.data_report import NAME as DATA_REPORT
from mcl_dist.run_context import index_dir
from mcl_dist.steps.base import Step
from mcl_dist.steps.embed import EmbedStep
from mcl_dist.steps.evaluate import EvalStep
from mcl_dist.steps.integrate import IntegrateStep
from mcl_dist.steps.kmeans import KMeansStep
from mcl_dist.steps.labels import LabelsStep
from mcl_dist.steps.report import ReportStep
from mcl_dist.steps.train import TrainStep

__all__ = ["Step", "TrainStep", "EmbedStep", "KMeansStep", "LabelsStep", "IntegrateStep", "EvalStep", "ReportStep",
           "plan_steps", "run_files"]


def plan_steps(cfg: Config, world_size: int, data_fp: str = "") -> list[Step]:
    """Every step of the run in order, each with the settings its result depends on."""
    out: list[Step] = []
    fps: dict[str, str] = {}

    def add(step: Step, upstream: list[str], **more) -> None:
        step.settings = {"upstream": [fps[u] for u in upstream], **more, **step.result_settings()}
        out.append(step)
        fps[step.name] = step.fingerprint

    add(TrainStep(cfg, stage=0), [], data=data_fp, world_size=world_size)
    for s in range(1, len(cfg.stages)):
        add(EmbedStep(cfg, stage=s), [f"stage_{s - 1}/train"], data=data_fp)
        add(KMeansStep(cfg, stage=s), [f"stage_{s}/embed"])
        add(LabelsStep(cfg, stage=s), [f"stage_{s}/kmeans"] + ([f"stage_{s - 1}/labels"] if s > 1 else []))
        add(TrainStep(cfg, stage=s), [f"stage_{s}/labels", f"stage_{s - 1}/train"], data=data_fp, world_size=world_size)
    add(IntegrateStep(cfg), [f"stage_{s}/train" for s in range(len(cfg.stages))])
    if cfg.eval.enabled:
        add(EvalStep(cfg), ["integrate"])
    add(ReportStep(cfg), ["integrate"] + (["eval"] if cfg.eval.enabled else []))
    return out


def run_files(cfg: Config, run_dir: str) -> list[str]:
    """What the run writes outside its steps: the resolved config, the manifest, the data check (local
    shards), the account of unusable samples (data_report.json: the data check's, training's,
    embedding's and evaluation's entries in one file, so no step's recorded outputs, whose checksums a
    later step's entry would change) and the tar index cache (stages >= 1 on tar shards; a CSV needs
    none). The run's lock
    (run.lock) and the ranks' sync markers (.sync/) live only while a launch runs (rundir.release)."""
    j = os.path.join
    out = [j(run_dir, "config.yaml"), j(run_dir, "manifest.json"), j(run_dir, "data_check.json"),
           j(run_dir, DATA_REPORT)]
    if len(cfg.stages) > 1 and resolve_type(cfg) == "webdataset":
        out.append(j(index_dir(cfg, run_dir), ""))
    return out
