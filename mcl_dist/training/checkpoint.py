"""Periodic atomic training checkpoints and finding the one to resume from.

A checkpoint is one file `<stage_dir>/checkpoints/step_XXXXXXXX.pt` (mcl_dist/core/layout.py) holding the model (under
open_clip's 'state_dict' key, so open_clip can load it directly), optimizer and schedule state,
the step, every rank's data position and a fingerprint of the config that produced it.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Any, Optional

from mcl_dist.config.schema import ConfigError
from mcl_dist.core.files import load_torch, save_torch
from mcl_dist.core.layout import is_train_checkpoint, train_checkpoint, train_checkpoints_glob

log = logging.getLogger(__name__)


def list_checkpoints(stage_dir: str) -> list[str]:
    return sorted(p for p in glob.glob(train_checkpoints_glob(stage_dir)) if is_train_checkpoint(p))


def save(stage_dir: str, step: int, state: dict[str, Any], keep: int) -> str:
    path = train_checkpoint(stage_dir, step)
    save_torch(state, path)
    for old in list_checkpoints(stage_dir)[:-keep] if keep > 0 else []:
        os.remove(old)
    return path


def latest(stage_dir: str, fingerprint: Optional[str] = None, step: str = "") -> Optional[dict[str, Any]]:
    """The newest readable checkpoint; a damaged newest file falls back to the one before. `step`: the
    training step's name, for the --redo that a checkpoint of other settings calls for."""
    for path in reversed(list_checkpoints(stage_dir)):
        try:
            state = load_torch(path)
        except RuntimeError as e:
            log.warning("skipping unreadable checkpoint %s (%s)", path, e)
            continue
        if fingerprint is not None and state.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{path} was written by a different configuration, data or world size than this run "
                f"(fingerprint {state.get('fingerprint')} != {fingerprint}); revert the change to resume, "
                f"or add --redo {step} to train this stage afresh (or use a new --run-dir)")
        state["path"] = path
        return state
    return None
