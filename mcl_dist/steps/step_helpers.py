"""Helpers the step bodies share: the redo hint of a broken input, stale rank parts, a stage's model."""
from __future__ import annotations

import glob
import os
from typing import Any

from mcl_dist.config.schema import ConfigError
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core import layout
from mcl_dist.core.files import load_torch
from mcl_dist.data.preflight import DataError
from mcl_dist.model.open_clip_models import warn_quick_gelu
from mcl_dist.objectives import get_objective
from mcl_dist.run.run_context import RunContext


def redo_hint(e: Exception, step: str) -> ConfigError:
    return DataError(f"{e}; recover with --redo {step} (it recomputes that step and every later one)")


def remove_stale(pattern: str, world: int) -> None:
    """Parts written by an interrupted run with another world size must not be mixed in."""
    if dist_utils.info().is_main:
        for path in glob.glob(pattern):
            if not layout.of_world(path, world):
                os.remove(path)
    dist_utils.barrier()


def load_stage_model(ctx: RunContext, s: int) -> dict[str, Any]:
    bundle = get_objective(ctx.cfg).create_bundle(ctx.info.device, pretrained="")
    path = layout.stage_checkpoint(ctx.run_dir, s)
    state = load_torch(path)
    bundle["model"].load_state_dict(state["state_dict"])
    warn_quick_gelu(path, state, bundle["model"])  # the config now running may not be the one it was trained with
    return bundle
