"""open_clip models by name or JSON config, weights from a tag or a local checkpoint, locking.

Checkpoints we write keep open_clip's layout (`{"state_dict": ...}`), so a stage checkpoint
loads with plain `open_clip.create_model_and_transforms(name, pretrained=path)`. That call builds
the architecture from its name alone, without QuickGELU unless `force_quick_gelu=True` (open_clip
applies it only for its named tags); the stage's `open_clip/` folder (mcl_dist/model/open_clip_dir.py)
carries it. Where mcl_dist itself rebuilds a stage from a checkpoint, a model whose activation
differs from the one it was trained with is a QuickGeluMismatch warning.
"""
from __future__ import annotations

import difflib
import json
import os
import warnings
from typing import Any, Optional

import open_clip
import torch
from open_clip.transformer import QuickGELU

from mcl_dist.config.schema import ConfigError, ModelConfig


def register_config(config_file: str) -> tuple[str, dict]:
    """Make a JSON model config known to open_clip under its file stem."""
    if not os.path.exists(config_file):
        raise ConfigError(f"'model.config_file': {config_file} not found")
    try:
        with open(config_file) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise ConfigError(f"'model.config_file': {config_file} is not valid JSON ({e})") from e
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError(f"'model.config_file': {config_file} lacks embed_dim/vision_cfg/text_cfg")
    open_clip.add_model_config(config_file)
    return os.path.splitext(os.path.basename(config_file))[0], cfg


def model_name(mcfg: ModelConfig) -> tuple[str, Optional[dict]]:
    if mcfg.config_file:
        return register_config(mcfg.config_file)
    if mcfg.name not in open_clip.list_models():
        close = difflib.get_close_matches(mcfg.name, open_clip.list_models(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"'model.name': unknown open_clip model '{mcfg.name}'{hint}")
    return mcfg.name, None


def create(mcfg: ModelConfig, device: torch.device, pretrained: Optional[str] = None) -> dict[str, Any]:
    """Model, train/val transforms and tokenizer. `pretrained` overrides model.pretrained."""
    name, cfg_dict = model_name(mcfg)
    weights = mcfg.pretrained if pretrained is None else pretrained
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=weights or None, device=device, output_dict=True,
            force_quick_gelu=mcfg.force_quick_gelu)
    except RuntimeError as e:
        if weights:
            raise ConfigError(f"'model.pretrained': cannot load '{weights}' for {name}: {e}") from e
        raise
    if weights and os.path.isfile(weights):
        warn_quick_gelu(weights, peek_checkpoint(weights), model)
    if mcfg.force_quick_gelu:
        # the checkpoint must say so, or a later load would rebuild the model with plain GELU
        cfg_dict = {**(cfg_dict or open_clip.get_model_config(name)), "quick_gelu": True}
    apply_locks(model, mcfg)
    if mcfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return {"model": model, "name": name, "config": cfg_dict, "preprocess_train": preprocess_train,
            "preprocess_val": preprocess_val, "tokenizer": open_clip.get_tokenizer(name)}


def apply_locks(model: torch.nn.Module, mcfg: ModelConfig, lock_image: Optional[bool] = None,
                lock_text: Optional[bool] = None) -> None:
    """open_clip_train's --lock-image / --lock-text semantics."""
    if mcfg.lock_image if lock_image is None else lock_image:
        model.lock_image_tower(unlocked_groups=mcfg.lock_image_unlocked_groups,
                               freeze_bn_stats=mcfg.lock_image_freeze_bn_stats)
    if mcfg.lock_text if lock_text is None else lock_text:
        model.lock_text_tower(unlocked_layers=mcfg.lock_text_unlocked_layers,
                              freeze_layer_norm=mcfg.lock_text_freeze_layer_norm)


def stage_checkpoint(model: torch.nn.Module, name: str, cfg_dict: Optional[dict], **extra: Any) -> dict:
    """The dict we save for a finished stage: open_clip reads 'state_dict', we read the rest."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    out = {"state_dict": state, "model_name": name}
    if cfg_dict is not None:
        out["model_config"] = cfg_dict
    out.update(extra)
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------- QuickGELU

class QuickGeluMismatch(UserWarning):
    """A stage rebuilt with another activation than it was trained with: its features differ."""


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, QuickGELU) for m in unwrap(model).modules())


def trained_quick_gelu(checkpoint: Any) -> Optional[bool]:
    """Whether a stage checkpoint we wrote was trained with QuickGELU: its 'model_config' says so
    (model.force_quick_gelu, custom configs), else open_clip's config of its 'model_name' (the
    '-quickgelu' names). None when the file cannot tell (a plain open_clip checkpoint)."""
    if not isinstance(checkpoint, dict):
        return None
    cfg = checkpoint.get("model_config")
    if cfg is None and isinstance(checkpoint.get("model_name"), str):
        cfg = open_clip.get_model_config(checkpoint["model_name"])
    return bool(cfg.get("quick_gelu", False)) if isinstance(cfg, dict) else None


def warn_quick_gelu(where: str, checkpoint: Any, model: torch.nn.Module) -> None:
    """Warn when `model`, built to hold `checkpoint`'s weights, has the other activation."""
    trained, built = trained_quick_gelu(checkpoint), uses_quick_gelu(model)
    if trained is None or trained == built:
        return
    act = {True: "QuickGELU", False: "GELU"}
    fix = ("set model.force_quick_gelu: true (open_clip: force_quick_gelu=True, or load the stage's "
           "open_clip/ folder as 'local-dir:FOLDER')" if trained else
           "drop model.force_quick_gelu (open_clip: force_quick_gelu=False)")
    warnings.warn(f"{where}: trained with {act[trained]} but built with {act[built]}, so its features differ "
                  f"from the trained model's; {fix}", QuickGeluMismatch, stacklevel=2)


def peek_checkpoint(path: str) -> Any:
    """The checkpoint's dict without reading its tensors (mmap); None if it is not one we can open."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a legacy or foreign file: open_clip has loaded it already, we cannot tell
        return None
