"""Where rank 0's training metrics go besides <stage>/metrics.jsonl: `train.report_to`, as
open_clip_train's `--report-to` (a comma list of tensorboard and wandb).

tensorboard writes <stage>/tb/. wandb (optional: `pip install -e .[wandb]`) logs one wandb run per
trained stage, named `<run>-stage_<s>`, grouped by the run directory and with a stable id, so a
resumed stage continues its own run; WANDB_PROJECT (default mcl_dist), WANDB_MODE=offline and
WANDB_DIR work as wandb documents them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from typing import Any

from mcl_dist.config.schema import Config, ConfigError, to_dict
from mcl_dist.core.layout import stage_dir, stage_name, tb_dir, wandb_dir

log = logging.getLogger("mcl_dist")

REPORTERS = ("tensorboard", "wandb")


def parse_report_to(text: str, where: str = "config") -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; an unknown name or a missing wandb is an error
    at config load, before stage 0, not when the first stage starts logging."""
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    for n in names:
        if n not in REPORTERS:
            raise ConfigError(f"{where}: 'train.report_to' names {n!r}; use a comma list of "
                              f"{', '.join(REPORTERS)} (or \"\" for neither)")
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"{where}: 'train.report_to' includes wandb but wandb is not installed; "
                          f"pip install -e .[wandb] (or drop wandb from train.report_to)")
    return names


class TensorBoard:
    def __init__(self, sdir: str):
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is optional in torch

        self.writer = SummaryWriter(tb_dir(sdir))

    def log(self, step: int, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


def wandb_ids(run_dir: str, stage: int) -> dict[str, str]:
    """The group (the run directory), name and id of a stage's wandb run; the id is stable across resumes."""
    path = os.path.abspath(run_dir)
    base = re.sub(r"[^A-Za-z0-9_-]", "_", os.path.basename(path))
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    stage_ = stage_name(stage)
    return {"group": path[-128:], "name": f"{base}-{stage_}", "id": f"{base[:40]}-{digest}-{stage_}"}


def logged_config(cfg: Config) -> dict:
    """The config as logged: with model.config_file the model built is named by that file, not by
    model.name's default, so the logged name is the model that trained."""
    out = to_dict(cfg)
    if cfg.model.config_file:
        out["model"] = {**out["model"], "name": os.path.splitext(os.path.basename(cfg.model.config_file))[0]}
    return out


class Wandb:
    def __init__(self, cfg: Config, run_dir: str, stage: int):
        import wandb  # optional dependency (extra "wandb")

        ids = wandb_ids(run_dir, stage)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mcl_dist"),
                              dir=os.environ.get("WANDB_DIR", wandb_dir(run_dir)),  # wandb writes <dir>/wandb/
                              config={**logged_config(cfg), "stage": stage}, job_type=stage_name(stage),
                              reinit="finish_previous", resume="allow", **ids)

    def log(self, step: int, values: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_reporters(cfg: Config, run_dir: str, stage: int) -> list:
    """The reporters `train.report_to` names, for one stage (rank 0 only)."""
    out: list = []
    for name in parse_report_to(cfg.train.report_to):
        if name == "tensorboard":
            try:
                out.append(TensorBoard(stage_dir(run_dir, stage)))
            except ImportError:  # the JSONL file has everything; the plan named tb/, so say why it is absent
                log.info("train.report_to names tensorboard but tensorboard is not installed: no %s "
                            "(pip install -e .[tensorboard])", tb_dir(stage_dir(run_dir, stage)))
        else:
            out.append(Wandb(cfg, run_dir, stage))
    return out
