"""Stage models as open_clip local-dir folders, which open_clip builds exactly as trained.

open_clip applies QuickGELU only for its named pretrained tags: a checkpoint file passed as
`create_model_and_transforms("ViT-L-14", pretrained=path)` is built from the architecture's name
alone, so a model trained with QuickGELU comes back with GELU, silently. A local-dir folder carries
the model config (with `quick_gelu`) and the preprocessing next to the weights, and
`open_clip.create_model_and_transforms("local-dir:FOLDER")` reads all three (open_clip's
factory.create_model, the 'local-dir:' schema; the same layout open_clip's push_to_hf_hub writes,
so a folder can be uploaded as an 'hf-hub:' model as it is).

Every stage of an open_clip objective gets `stage_s/open_clip/`; the integrated model, a
concatenation of the stages, gets one folder per stage, `integrated/open_clip/stage_s/` (hard links
to the stage's files where the filesystem allows), and `integration.json` with the stage weights
and the per-stage scaling that mcl_dist.integration.integrated_model applies to their features.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from typing import Optional

import open_clip
import safetensors.torch
import torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.transform import PreprocessCfg

from mcl_dist.core import layout
from mcl_dist.core.files import atomic_path, read_json, write_json

DIR_NAME = layout.OPEN_CLIP  # stage_s/open_clip/ and integrated/open_clip/stage_s/
CONFIG_NAME = HF_CONFIG_NAME  # open_clip_config.json: {"model_cfg": ..., "preprocess_cfg": ...}
WEIGHTS_NAME = HF_SAFE_WEIGHTS_NAME  # open_clip_model.safetensors: the bare state dict
INTEGRATION_NAME = layout.INTEGRATION  # integrated/open_clip/: stage folders, weights, scaling


def stage_folder(stage_dir: str) -> str:
    return layout.open_clip_folder(stage_dir)


def integrated_folder(run_dir: str) -> str:
    return layout.integrated_open_clip(run_dir)


def model_config(name: str, cfg_dict: Optional[dict]) -> dict:
    """The config the stage was built from: its custom (or QuickGELU-marked) one, else open_clip's own
    for the name (a '-quickgelu' name's says quick_gelu itself)."""
    cfg = cfg_dict if cfg_dict is not None else open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model '{name}' and no model config to write")
    return cfg


def write(folder: str, state_dict: dict, model_cfg: dict, preprocess_cfg: Optional[dict] = None) -> str:
    """Weights, then the config (open_clip needs both; the config last, so a folder with a config is
    whole). preprocess_cfg None: open_clip's defaults, the size taken from the model."""
    pre = dict(preprocess_cfg) if preprocess_cfg is not None else asdict(PreprocessCfg())
    if preprocess_cfg is None:
        pre.pop("size")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(os.path.join(folder, WEIGHTS_NAME)) as tmp:
        safetensors.torch.save_file(tensors, tmp)
    write_json({"model_cfg": model_cfg, "preprocess_cfg": pre}, os.path.join(folder, CONFIG_NAME))
    return folder


def write_stage(folder: str, checkpoint: dict, model: torch.nn.Module) -> str:
    """A trained stage's folder: the weights and config of its `checkpoint.pt` dict
    (models.stage_checkpoint) and the preprocessing the model was trained with."""
    pre = getattr(getattr(getattr(model, "module", model), "visual", None), "preprocess_cfg", None)
    cfg = model_config(checkpoint["model_name"], checkpoint.get("model_config"))
    return write(folder, checkpoint["state_dict"], cfg, pre)


def copy(src: str, folder: str) -> str:
    """`src`'s folder as `folder`: the weights hard-linked (no second copy on disk) or copied."""
    with atomic_path(os.path.join(folder, WEIGHTS_NAME)) as tmp:
        os.remove(tmp)
        try:
            os.link(os.path.join(src, WEIGHTS_NAME), tmp)
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(os.path.join(src, WEIGHTS_NAME), tmp)
    write_json(read_json(os.path.join(src, CONFIG_NAME)), os.path.join(folder, CONFIG_NAME))
    return folder


def write_integrated(run_dir: str, stage_dirs: list[str], names: list[str], configs: list[Optional[dict]],
                     state_dicts: list[dict], weights: Optional[list[float]], integration: str) -> str:
    """integrated/open_clip/: each stage's folder (from the stage's own when it has one: runs trained
    before these folders existed get them written here) and integration.json."""
    out = integrated_folder(run_dir)
    for s, (stage_dir, name, cfg, sd) in enumerate(zip(stage_dirs, names, configs, state_dicts)):
        src, dst = stage_folder(stage_dir), os.path.join(out, layout.stage_name(s))
        if os.path.isfile(os.path.join(src, CONFIG_NAME)):
            copy(src, dst)
        else:
            write(dst, sd, model_config(name, cfg))
    n = len(stage_dirs)
    write_json({"stages": [layout.stage_name(s) for s in range(n)], "weights": list(weights or [1.0] * n),
                "integration": integration}, os.path.join(out, INTEGRATION_NAME))
    return out
