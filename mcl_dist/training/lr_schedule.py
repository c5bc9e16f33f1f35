"""Learning-rate schedules, named as open_clip_train names them (`--lr-scheduler`).

    cosine          linear warm-up, then cosine decay to 0 over the rest of the stage
    const           linear warm-up, then the base lr until the end (the MCL paper's recipe)
    const-cooldown  const, then a decay to `cooldown_end` over the last `cooldown_steps` steps
                    ((1 - t)^power, t = share of the cool-down done; power 1 = linear)

The values are open_clip_train's own (`open_clip_train.scheduler`, shipped with open_clip_torch):
its schedulers set an optimizer's lr and return it; here they get a stand-in with no parameter
groups, because the engines set the lr themselves (DeepSpeed keeps its own optimizer). `lr_at` takes
the warm-up as a number of steps, so a caller that derives it another way (a share of the stage, say)
only changes what it passes in.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

from open_clip_train import scheduler as oc_scheduler

from mcl_dist.config.origins import blame
from mcl_dist.config.registry import Choice
from mcl_dist.config.schema import Config, ConfigError


def _check_cooldown(cfg: Config, where: str) -> None:
    t = cfg.train
    if t.lr_cooldown_steps <= 0:
        raise ConfigError(f"{blame(where, 'train.lr_scheduler', 'train.lr_cooldown_steps')}: 'train.lr_scheduler' const-cooldown needs 'train.lr_cooldown_steps' > 0, "
                          f"got {t.lr_cooldown_steps}")


# `train.lr_scheduler`
SCHEDULERS = {"cosine": Choice(), "const": Choice(), "const-cooldown": Choice(check=_check_cooldown)}


def lr_at(step: int, total_steps: int, warmup_steps: int, kind: str = "cosine", base_lr: float = 1.0,
          cooldown_steps: int = 0, cooldown_power: float = 1.0, cooldown_end: float = 0.0) -> float:
    """The lr of optimizer step `step` (0-based) of a stage of `total_steps` steps."""
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown lr scheduler {kind!r}; use one of {', '.join(SCHEDULERS)}")
    # open_clip's schedules are defined on steps 0..total-1 (cosine divides by total - warmup there)
    step = min(step, max(total_steps - 1, 0))
    no_groups = SimpleNamespace(param_groups=[])
    if kind == "cosine":
        adjust = oc_scheduler.cosine_lr(no_groups, base_lr, warmup_steps, total_steps)
    elif kind == "const":
        adjust = oc_scheduler.const_lr(no_groups, base_lr, warmup_steps, total_steps)
    else:
        adjust = oc_scheduler.const_lr_cooldown(no_groups, base_lr, warmup_steps, total_steps,
                                                min(cooldown_steps, total_steps), cooldown_power, cooldown_end)
    return float(adjust(step))


def warmup_steps(tcfg, total_steps: int) -> int:
    """A stage's warm-up: train.warmup_share of its steps when set, else train.warmup_steps."""
    if tcfg.warmup_share > 0:
        return max(1, math.ceil(tcfg.warmup_share * total_steps))
    return tcfg.warmup_steps


def scheduled_lr(tcfg, step: int, total_steps: int, base_lr: float, warmup: int | None = None) -> float:
    """`lr_at` with a TrainConfig's scheduler settings (warm-up: `warmup_steps(tcfg, total_steps)`)."""
    warmup = warmup_steps(tcfg, total_steps) if warmup is None else warmup
    return lr_at(step, total_steps, warmup, tcfg.lr_scheduler, base_lr, tcfg.lr_cooldown_steps,
                 tcfg.lr_cooldown_power, tcfg.lr_cooldown_end)
