"""The training objectives by name, as the config's `objective:` names them.

Each objective is one class in its own module (objective.py says what it provides: model, training
decoder, loss, locks, checkpoint loading, and `check`, which refuses impossible settings when the
config loads). Adding one: write its module and add its class to REGISTRY.
"""
from __future__ import annotations

from typing import Optional

from mcl_dist.config.schema import Config, ConfigError
from mcl_dist.objectives.clip import Clip
from mcl_dist.objectives.objective import Objective
from mcl_dist.objectives.simclr import SimCLR

REGISTRY: dict[str, type[Objective]] = {cls.name: cls for cls in (Clip, SimCLR)}
DEFAULT = Clip  # open_clip checkpoints, ours and plain ones, carry no mark of their objective



def get_objective(cfg: Config) -> Objective:
    """The objective `cfg.objective` names, built on `cfg`."""
    cls = REGISTRY.get(cfg.objective)
    if cls is None:
        raise ConfigError(f"'objective' must be one of {', '.join(REGISTRY)}, got {cfg.objective!r}")
    return cls(cfg)


def checkpoint_objective(model_config: Optional[dict]) -> type[Objective]:
    """The objective that wrote a stage checkpoint, from its 'model_config'."""
    return next((cls for cls in REGISTRY.values() if cls.reads_checkpoint(model_config)), DEFAULT)
