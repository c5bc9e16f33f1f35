"""What differs between CLIP and SimCLR stages, in one place: the model, the training decoder,
and the forward pass + label-masked loss. Everything else (sampler, k-means, pseudo-labels,
manifest, integration, report) is shared."""
from __future__ import annotations

from typing import Any, Optional

import torch

from mcl_dist.config import Config
from mcl_dist.loss import ClipLoss, nt_xent


def create_bundle(cfg: Config, device: torch.device, pretrained: Optional[str] = None) -> dict[str, Any]:
    if cfg.objective == "simclr":
        from mcl_dist.simclr import create_simclr

        return create_simclr(cfg.simclr, device)
    from mcl_dist.models import create

    return create(cfg.model, device, pretrained=pretrained)


def train_decoder(cfg: Config, bundle: dict):
    if cfg.objective == "simclr":
        from mcl_dist.simclr import TwoViewDecoder

        return TwoViewDecoder(bundle["preprocess_train"], cfg.data.image_ext, cfg.data.max_image_pixels,
                              cfg.data.max_member_bytes)
    from mcl_dist.data.decode import CachedDecode, ClipDecoder

    transform = bundle["preprocess_train" if cfg.data.augment else "preprocess_val"]
    decoder = ClipDecoder(transform, bundle["tokenizer"], cfg.data.image_ext, cfg.data.caption_ext,
                          max_pixels=cfg.data.max_image_pixels, max_bytes=cfg.data.max_member_bytes)
    return CachedDecode(decoder) if cfg.data.cache_decoded else decoder


_CLIP_LOSS = ClipLoss()


def forward_loss(cfg: Config, engine, batch: dict, device: torch.device, labels: Optional[torch.Tensor],
                 gather: bool) -> torch.Tensor:
    images = batch["image"].to(device, non_blocking=True)
    if cfg.objective == "simclr":
        out = engine.forward(image=images, image2=batch["image2"].to(device, non_blocking=True))
        return nt_xent(out["z1"].float(), out["z2"].float(), cfg.simclr.temperature, labels=labels, gather=gather,
                       gather_with_grad=cfg.train.gather_with_grad)
    out = engine.forward(image=images, text=batch["text"].to(device, non_blocking=True))
    return _CLIP_LOSS(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
                      labels=labels, gather=gather, gather_with_grad=cfg.train.gather_with_grad,
                      local_loss=cfg.train.local_loss)
