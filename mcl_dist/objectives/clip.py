"""CLIP stages: an open_clip image-text model (`mcl_dist.model.open_clip_models`), image + caption samples, and the
label-masked CLIP loss. Stage checkpoints keep open_clip's layout, so they load with plain open_clip."""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Optional

import open_clip
import torch
from open_clip import factory
from open_clip.transform import PreprocessCfg, image_transform_v2

from mcl_dist.config.schema import ConfigError, StageConfig
from mcl_dist.data.decode import CachedDecode, ClipDecoder
from mcl_dist.model.open_clip_models import apply_locks, create
from mcl_dist.objectives.loss import ClipLoss
from mcl_dist.objectives.objective import Objective


class Clip(Objective):
    name = "clip"
    captions = True
    open_clip_folder = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self._loss = ClipLoss()

    def create_bundle(self, device: torch.device, pretrained: Optional[str] = None) -> dict[str, Any]:
        return create(self.cfg.model, device, pretrained=pretrained)

    def train_decoder(self, bundle: dict):
        d = self.cfg.data
        transform = bundle["preprocess_train" if d.augment else "preprocess_val"]
        decoder = ClipDecoder(transform, bundle["tokenizer"], d.image_ext, d.caption_ext,
                              max_pixels=d.max_image_pixels, max_bytes=d.max_member_bytes)
        return CachedDecode(decoder) if d.cache_decoded else decoder

    def loss(self, engine, batch: dict, device: torch.device, labels: Optional[torch.Tensor],
             gather: bool) -> torch.Tensor:
        t = self.cfg.train
        out = engine.forward(image=batch["image"].to(device, non_blocking=True),
                             text=batch["text"].to(device, non_blocking=True))
        return self._loss(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
                          labels=labels, gather=gather, gather_with_grad=t.gather_with_grad, local_loss=t.local_loss)

    def lock(self, model: torch.nn.Module, stage: Optional[StageConfig] = None) -> None:
        if stage is None:
            apply_locks(model, self.cfg.model)
        elif stage.lock_image is not None or stage.lock_text is not None:
            apply_locks(model, self.cfg.model, lock_image=stage.lock_image, lock_text=stage.lock_text)

    def downloads(self, key: str, tag: str) -> bool:
        """An open_clip pretrained tag of model.name (a JSON model config has none)."""
        if self.cfg.model.config_file:
            return False
        tags = open_clip.list_pretrained_tags_by_model(self.cfg.model.name)
        if tag not in tags:
            raise ConfigError(f"'{key}': '{tag}' is neither a local file nor an open_clip tag of "
                              f"{self.cfg.model.name} (tags: {', '.join(tags) or 'none'})")
        return True

    @classmethod
    def load_checkpoint(cls, name: str, model_config: Optional[dict], state_dict: dict,
                        device: Any) -> tuple[torch.nn.Module, Any, Any]:
        reg = _register(name, model_config)
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly"; the weights come next
        try:
            model = open_clip.create_model(reg, pretrained=None, device="cpu")
        finally:
            logging.disable(logging.NOTSET)
        sd = dict(state_dict)
        if "logit_scale" in sd and sd["logit_scale"].shape != model.logit_scale.shape:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"weights do not match open_clip model '{name}': {e}") from e
        model.to(device).eval()
        preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        return model, preprocess, open_clip.get_tokenizer(reg)


def _register(name: str, cfg: Optional[dict]) -> str:
    """Make `cfg` known to open_clip; returns the name to create it under.

    A checkpoint carries its own config, so a run directory loads without the original JSON file.
    If another config is already registered under the same name, use a content-hashed alias
    rather than silently building the wrong architecture.
    """
    if cfg is None:
        if name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model '{name}' and the checkpoint carries no model config")
        return name
    configs = factory._MODEL_CONFIGS  # read now: open_clip rebinds it whenever a config is added
    known = configs.get(name)
    if known is None or known == cfg:
        configs[name] = cfg
        return name
    alias = f"{name}@{hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]}"
    configs[alias] = cfg
    return alias
