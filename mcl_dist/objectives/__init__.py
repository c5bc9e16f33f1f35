"""The training objectives by name, as the config's `objective:` names them.

Each objective is one class in its own module (base.py says what it provides: model, training
decoder, loss, locks, checkpoint loading). Adding one: write its module, add it to REGISTRY, and
add its name to `config.OBJECTIVES` (and to `config.IMAGE_ONLY` if its samples have no caption);
the config keeps those names so that it needs no objective module (no import circle).
"""
from __future__ import annotations

from typing import Optional

from mcl_dist.config import IMAGE_ONLY, OBJECTIVES, Config, ConfigError
from mcl_dist.objectives.base import Objective
from mcl_dist.objectives.clip import Clip
from mcl_dist.objectives.simclr import SimCLR

REGISTRY: dict[str, type[Objective]] = {cls.name: cls for cls in (Clip, SimCLR)}
DEFAULT = Clip  # open_clip checkpoints, ours and plain ones, carry no mark of their objective

assert tuple(REGISTRY) == OBJECTIVES, f"objectives {tuple(REGISTRY)} != config.OBJECTIVES {OBJECTIVES}"
assert tuple(n for n, c in REGISTRY.items() if not c.captions) == IMAGE_ONLY, "config.IMAGE_ONLY disagrees"


def get_objective(cfg: Config) -> Objective:
    """The objective `cfg.objective` names, built on `cfg`."""
    cls = REGISTRY.get(cfg.objective)
    if cls is None:
        raise ConfigError(f"'objective' must be one of {', '.join(REGISTRY)}, got {cfg.objective!r}")
    return cls(cfg)


def checkpoint_objective(model_config: Optional[dict]) -> type[Objective]:
    """The objective that wrote a stage checkpoint, from its 'model_config'."""
    return next((cls for cls in REGISTRY.values() if cls.reads_checkpoint(model_config)), DEFAULT)
