"""SimCLR stages: unimodal MCL on image-only shards through the same pipeline.

A torchvision ResNet backbone (optionally with the CIFAR stem for small images) plus an MLP
projection head. `encode_image` returns the backbone features (before the head): those are what
k-means clusters and what the integrated model concatenates, as in the paper. `forward(image,
image2)` returns both views' projections for the label-masked NT-Xent loss.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torchvision
from torchvision import transforms as T

from mcl_dist.config.origins import blame
from mcl_dist.config.schema import Config, ConfigError, SimCLRConfig
from mcl_dist.data.decode import decode_image
from mcl_dist.objectives.loss import nt_xent
from mcl_dist.objectives.objective import Objective

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCHS = {"resnet18": ([2, 2, 2, 2], "basic"), "resnet34": ([3, 4, 6, 3], "basic"),
         "resnet50": ([3, 4, 6, 3], "bottleneck"), "tiny": ([1, 1, 1, 1], "basic")}


def backbone(scfg: SimCLRConfig) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier; `tiny` is a one-block-per-stage ResNet for tests."""
    if scfg.arch not in ARCHS:
        raise ConfigError(f"'simclr.arch' must be one of {', '.join(ARCHS)}, got {scfg.arch!r}")
    layers, kind = ARCHS[scfg.arch]
    block = torchvision.models.resnet.BasicBlock if kind == "basic" else torchvision.models.resnet.Bottleneck
    net = torchvision.models.resnet.ResNet(block, layers)
    if scfg.cifar_stem:  # 3x3 stride-1 stem, no max-pool: keeps 32x32 images from vanishing
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


class SimCLRModel(nn.Module):
    def __init__(self, scfg: SimCLRConfig):
        super().__init__()
        self.backbone, dim = backbone(scfg)
        self.head = nn.Sequential(nn.Linear(dim, scfg.proj_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(scfg.proj_hidden, scfg.proj_dim))
        self.output_dim = dim

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.backbone(image)
        return nn.functional.normalize(feats, dim=-1) if normalize else feats

    def forward(self, image: torch.Tensor, image2: torch.Tensor) -> dict[str, torch.Tensor]:
        both = self.head(self.backbone(torch.cat([image, image2])))
        z1, z2 = both.chunk(2)
        return {"z1": z1, "z2": z2}


def train_transform(scfg: SimCLRConfig) -> T.Compose:
    """SimCLR's augmentations, each switchable: a benchmark keeps colour as the easy feature by
    turning colour jitter and grayscale off."""
    size = scfg.image_size
    steps: list[Any] = [T.RandomResizedCrop(size, scale=(scfg.crop_scale, 1.0)) if scfg.crop else T.Resize((size, size))]
    if scfg.flip:
        steps.append(T.RandomHorizontalFlip())
    if scfg.color_jitter > 0:
        s = scfg.color_jitter
        steps.append(T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8))
    if scfg.grayscale > 0:
        steps.append(T.RandomGrayscale(p=scfg.grayscale))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(MEAN, STD)])


def val_transform(scfg: SimCLRConfig) -> T.Compose:
    return T.Compose([T.Resize((scfg.image_size, scfg.image_size)), T.ToTensor(), T.Normalize(MEAN, STD)])


class TwoViewDecoder:
    """Image-only sample -> two independently augmented views (no caption needed)."""

    def __init__(self, transform, image_exts: str = "jpg;png;webp;jpeg", max_pixels: int = 40_000_000,
                 max_bytes: int = 64 << 20):
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.transform = transform
        self.image_exts = tuple(e.strip().lower() for e in image_exts.split(";") if e.strip())

    def __call__(self, raw: dict) -> dict[str, Any]:
        img = decode_image(raw, self.image_exts, self.max_pixels, self.max_bytes)  # decoded once, augmented twice
        return {"image": self.transform(img), "image2": self.transform(img), "key": raw["__key__"]}


class SimCLR(Objective):
    """The checkpoint's 'model_config' is `{"simclr": <simclr settings>}`: that marks it as ours."""

    name = "simclr"
    captions = False

    @classmethod
    def check(cls, cfg: Config, where: str) -> None:
        super().check(cfg, where)
        if cfg.simclr.arch not in ARCHS:
            raise ConfigError(f"{blame(where, 'simclr.arch')}: 'simclr.arch' must be one of {', '.join(ARCHS)}, got {cfg.simclr.arch!r}")

    def create_bundle(self, device: torch.device, pretrained: Optional[str] = None) -> dict[str, Any]:
        scfg = self.cfg.simclr
        model = SimCLRModel(scfg).to(device)
        return {"model": model, "name": f"simclr-{scfg.arch}", "config": {"simclr": scfg.__dict__.copy()},
                "preprocess_train": train_transform(scfg), "preprocess_val": val_transform(scfg), "tokenizer": None}

    def train_decoder(self, bundle: dict) -> TwoViewDecoder:
        d = self.cfg.data
        return TwoViewDecoder(bundle["preprocess_train"], d.image_ext, d.max_image_pixels, d.max_member_bytes)

    def loss(self, engine, batch: dict, device: torch.device, labels: Optional[torch.Tensor],
             gather: bool) -> torch.Tensor:
        out = engine.forward(image=batch["image"].to(device, non_blocking=True),
                             image2=batch["image2"].to(device, non_blocking=True))
        return nt_xent(out["z1"].float(), out["z2"].float(), self.cfg.simclr.temperature, labels=labels,
                       gather=gather, gather_with_grad=self.cfg.train.gather_with_grad)

    @classmethod
    def reads_checkpoint(cls, model_config: Optional[dict]) -> bool:
        return bool(model_config) and "simclr" in model_config

    @classmethod
    def load_checkpoint(cls, name: str, model_config: Optional[dict], state_dict: dict,
                        device: Any) -> tuple[torch.nn.Module, Any, Any]:
        scfg = SimCLRConfig(**model_config["simclr"])
        model = SimCLRModel(scfg)
        model.load_state_dict(state_dict)
        return model.to(device).eval(), val_transform(scfg), None
