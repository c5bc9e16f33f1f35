"""The interface every objective implements: what a stage needs that differs between objectives.

Everything else (sampler, k-means, pseudo-labels, manifest, integration, report) is shared. An
objective is built from the run's config; loading a saved checkpoint needs no config, so that part
is a class method.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from mcl_dist.config.origins import blame
from mcl_dist.config.schema import Config, ConfigError, StageConfig


class Objective:
    name = ""  # the config's `objective:` value
    captions = True  # samples need a caption: the data preflight checks it, k-means may embed text
    open_clip_folder = False  # stages are open_clip models: each also saved as an open_clip local-dir folder

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: Config, where: str) -> None:
        """Refuse settings this objective cannot run, when the config loads (a ConfigError)."""
        if cls.captions:
            return
        if not cfg.data.augment:
            raise ConfigError(f"{blame(where, 'data.augment', 'objective')}: 'data.augment' false applies to CLIP only; the views of objective "
                              f"{cls.name} are set under {cls.name}.* (crop, colour jitter)")
        if cfg.cluster.embed != "image":
            raise ConfigError(f"{blame(where, 'cluster.embed', 'objective')}: 'cluster.embed' must be image for objective {cls.name} (there is no text)")

    def create_bundle(self, device: torch.device, pretrained: Optional[str] = None) -> dict[str, Any]:
        """{"model", "name", "config", "preprocess_train", "preprocess_val", "tokenizer"}; `pretrained`
        overrides the config's weights ("" forces a fresh init)."""
        raise NotImplementedError

    def train_decoder(self, bundle: dict) -> Callable[[dict], dict]:
        """Raw webdataset sample -> the tensors `loss` reads; picklable for DataLoader workers."""
        raise NotImplementedError

    def loss(self, engine, batch: dict, device: torch.device, labels: Optional[torch.Tensor],
             gather: bool) -> torch.Tensor:
        """Forward pass through the engine and the label-masked contrastive loss of one micro-batch."""
        raise NotImplementedError

    def lock(self, model: torch.nn.Module, stage: Optional[StageConfig] = None) -> None:
        """Freeze parameters: the run's locks (stage None) or a stage's overrides. Default: none."""

    def downloads(self, key: str, tag: str) -> bool:
        """Whether the weights tag at config key `key` is fetched on first use (a ConfigError if the
        tag is unknown). Default: the objective takes no tags."""
        return False

    @classmethod
    def reads_checkpoint(cls, model_config: Optional[dict]) -> bool:
        """Whether a stage checkpoint with this 'model_config' is this objective's. The default
        objective (CLIP, open_clip's layout) takes every checkpoint no other objective claims."""
        return False

    @classmethod
    def load_checkpoint(cls, name: str, model_config: Optional[dict], state_dict: dict,
                        device: Any) -> tuple[torch.nn.Module, Any, Any]:
        """(model in eval mode, eval preprocess, tokenizer or None) from a saved stage."""
        raise NotImplementedError
