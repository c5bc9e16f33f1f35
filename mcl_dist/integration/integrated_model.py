"""Cross-stage integration: one model whose features concatenate every stage's features.

Two independent choices compose, in this order:
1. per-stage scaling (`integration`, model.integration): "normalized" L2-normalises each stage's
   features (the paper); "raw" leaves them as they are (the public MCL code's MMVP notebook:
   stages whose features are longer then weigh more);
2. stage weights (`weights`, model.integration_weights): each stage's scaled block is then
   multiplied by sqrt(w_s / sum w), so a stage with w_s = 0 contributes a block of zeros.
The concatenation is finally L2-normalised (`normalize=True`). With "normalized" the integrated
vector already has unit norm and the integrated cosine similarity is the weighted mean of the
per-stage cosine similarities (equal weights: the plain mean); with "raw" it is the cosine of the
weighted raw concatenation. Images and texts are integrated the same way, so CLIP zero-shot / pair
scoring works unchanged on the integrated model. Both choices are saved in the file and kept on load.

An integrated model is saved as ONE file that loads with `torch.load(weights_only=True)`:
only tensors, lists, dicts, strings, numbers and None.
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from mcl_dist.config.origins import blame
from mcl_dist.config.registry import Choice
from mcl_dist.config.schema import Config, ConfigError
from mcl_dist.core.files import load_torch, save_torch
from mcl_dist.model.open_clip_models import warn_quick_gelu
from mcl_dist.objectives import checkpoint_objective

FORMAT = "mcl_dist.integrated"
VERSION = 1
INTEGRATIONS = ("normalized", "raw")


def _check_cka(cfg: Config, where: str) -> None:
    m = cfg.model
    if not 0.0 < m.integration_redundant_cka <= 1.0 or m.integration_samples < 2:
        keys = ("model.integration_weights", "model.integration_redundant_cka", "model.integration_samples")
        raise ConfigError(f"{blame(where, *keys)}: model.integration_weights={m.integration_weights} needs "
                          f"'model.integration_redundant_cka' in (0, 1] and 'model.integration_samples' >= 2, got "
                          f"{m.integration_redundant_cka} and {m.integration_samples}")


def _first_last(cka: list, threshold: float) -> list[float]:
    """Stage 0 and the last stage only. A middle stage barely separates two images that differ in what
    only the last stage learned, yet takes a share of the mean similarity, so it dilutes the last
    stage; stage 0 keeps the easy features that later stages give up. On the benchmark's validation
    pairs it diluted least of the label-free rules, though not by nothing (docs/results.md)."""
    return [1.0 if s in (0, len(cka) - 1) else 0.0 for s in range(len(cka))]


# model.integration_weights: how much each stage weighs in the integrated model, from its linear CKA
# with the earlier stages' features (mcl_dist/integration/stage_similarity.py; None for stage 0), or from the
# stage's position alone (first_last). Label-free.
WEIGHTINGS = {"equal": Choice(build=lambda cka, threshold: [1.0] * len(cka)),
              "first_last": Choice(build=_first_last),
              "cka_drop": Choice(build=lambda cka, threshold: [1.0 if c is None or c < threshold else 0.0 for c in cka],
                                 check=_check_cka),
              "cka_weight": Choice(build=lambda cka, threshold: [1.0 if c is None else max(0.0, 1.0 - c) for c in cka],
                                   check=_check_cka)}


NEEDS_CKA = ("cka_drop", "cka_weight")  # the weightings that read the stages' CKA (the others: its length)


def stage_weights(choice: str, cka: Sequence[Optional[float]], threshold: float = 0.9) -> list[float]:
    """The integrated model's stage weights; stage 0 always keeps weight 1, so they never all vanish."""
    return WEIGHTINGS[choice].build(list(cka), threshold)


class IntegratedModel(nn.Module):
    """Stages' models side by side; `encode_image` / `encode_text` like an open_clip model."""

    def __init__(self, models: Sequence[nn.Module], weights: Optional[Sequence[float]] = None,
                 integration: str = "normalized"):
        super().__init__()
        if integration not in INTEGRATIONS:
            raise ValueError(f"integration must be one of {', '.join(INTEGRATIONS)}, got {integration!r}")
        self.integration = integration
        if not models:
            raise ValueError("IntegratedModel needs at least one stage model")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models):
            raise ValueError(f"{len(weights)} weights for {len(models)} stage models")
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ValueError(f"stage weights must be finite, >= 0 and not all 0; got {weights}")
        self.stages = nn.ModuleList(models)
        self.weights = weights
        total = sum(weights)
        self.register_buffer("scales", torch.tensor([math.sqrt(w / total) for w in weights]), persistent=False)
        # open_clip keeps log(scale); use the mean of the stages' values (CLIP's 100 if none have one)
        logs = [m.logit_scale.detach().float().reshape(()) for m in models if hasattr(m, "logit_scale")]
        init = torch.stack(logs).mean() if logs else torch.tensor(math.log(100.0))
        self.logit_scale = nn.Parameter(init.clone(), requires_grad=False)

    def _integrate(self, feats: list[torch.Tensor], normalize: bool) -> torch.Tensor:
        # 1. per-stage scaling. "normalized" L2-normalises each stage whatever `normalize` says: that
        # is the integration itself, and the result then already has unit norm (`normalize` only
        # removes rounding error). "raw" is the public code: torch.cat(raw features), then normalise.
        if self.integration == "normalized":
            feats = [F.normalize(f.float(), dim=-1) for f in feats]
        # 2. the stage weights, on the scaled blocks (equal weights: one common factor)
        out = torch.cat([f.float() * s for f, s in zip(feats, self.scales)], dim=-1)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._integrate([m.encode_image(image) for m in self.stages], normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        missing = [i for i, m in enumerate(self.stages) if not hasattr(m, "encode_text")]
        if missing:
            raise TypeError(f"stage(s) {missing} have no text tower (image-only backbone): encode_text is undefined")
        return self._integrate([m.encode_text(text) for m in self.stages], normalize)

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        # same tuple as open_clip's CLIP.forward without output_dict
        img = self.encode_image(image) if image is not None else None
        txt = self.encode_text(text) if text is not None else None
        return img, txt, self.logit_scale.exp()


# ---------------------------------------------------------------------------- save / load

def _stage_configs(model_config_json: Union[dict, Sequence[Optional[dict]], None], n: int) -> list[Optional[dict]]:
    """One config for all stages (they share the architecture in MCL) or one per stage."""
    if model_config_json is None or isinstance(model_config_json, dict):
        return [model_config_json] * n
    configs = list(model_config_json)
    if len(configs) != n:
        raise ValueError(f"{len(configs)} model configs for {n} stages")
    return configs


def save_integrated(path: str, model_names: list[str], state_dicts: list[dict],
                    weights: Optional[Sequence[float]] = None,
                    model_config_json: Union[dict, Sequence[Optional[dict]], None] = None,
                    integration: str = "normalized") -> str:
    """Write every stage's model name, custom config (if any) and weights into one atomic file."""
    n = len(model_names)
    if n == 0 or len(state_dicts) != n:
        raise ValueError(f"save_integrated: {n} model names but {len(state_dicts)} state dicts")
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"save_integrated: {len(weights)} weights for {n} stages")
    if integration not in INTEGRATIONS:
        raise ValueError(f"save_integrated: integration must be one of {', '.join(INTEGRATIONS)}, got {integration!r}")
    configs = _stage_configs(model_config_json, n)
    # a JSON round trip proves the configs hold only what the weights_only unpickler accepts
    configs = [json.loads(json.dumps(c)) if c is not None else None for c in configs]
    obj = {"format": FORMAT, "version": VERSION, "model_names": list(model_names), "model_configs": configs,
           "weights": weights, "integration": integration,
           "state_dicts": [{k: v.detach().cpu() for k, v in _strip_module(sd).items()} for sd in state_dicts]}
    save_torch(obj, path)
    return path


def _strip_module(sd: dict) -> dict:
    """DDP-wrapped state dicts carry a 'module.' prefix; open_clip's own loader strips it too."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _build(name: str, cfg: Optional[dict], state_dict: dict, device: Any,
           trained: Optional[dict] = None, where: str = "") -> tuple[nn.Module, Any, Any]:
    """`trained`: the 'model_name' and 'model_config' the stage was saved with, when `name` or `cfg`
    replace them (a QuickGeluMismatch warning if the activation then differs)."""
    built = checkpoint_objective(cfg).load_checkpoint(name, cfg, _strip_module(state_dict), device)
    if trained is not None:
        warn_quick_gelu(where, trained, built[0])
    return built


def load_model(path: str, device: Any = "cpu", model_name: Optional[str] = None) -> tuple[nn.Module, Any, Any]:
    """(model, preprocess, tokenizer) for an integrated file or a single stage checkpoint.

    Stage checkpoints are open_clip_train's `{"state_dict": ...}` plus our 'model_name' and
    optional 'model_config'; `model_name` names the architecture of a plain open_clip
    checkpoint that lacks it.
    """
    obj = load_torch(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise RuntimeError(f"{path}: integrated model format version {obj.get('version')} != {VERSION}")
        parts = zip(obj["model_names"], obj["model_configs"], obj["state_dicts"])
        built = [_build(n, c, sd, device) for n, c, sd in parts]
        sizes = {str(m.visual.preprocess_cfg.get("size")) if hasattr(m, "visual") else "simclr" for m, _, _ in built}
        ctx = {getattr(t, "context_length", None) for _, _, t in built}
        if len(sizes) > 1 or len(ctx) > 1:
            # one preprocess and one tokenizer feed every stage, so they must agree
            raise RuntimeError(f"{path}: stages differ in image size {sizes} or context length {ctx}")
        # files written before the choice existed integrated per-stage normalised features
        model = IntegratedModel([m for m, _, _ in built], obj["weights"], obj.get("integration", "normalized"))
        model = model.to(device).eval()
        return model, built[0][1], built[0][2]
    if isinstance(obj, dict) and "state_dict" in obj:
        name = model_name or obj.get("model_name")
        if not name:
            raise ValueError(f"{path}: checkpoint has no 'model_name'; pass model_name= (e.g. 'ViT-B-32')")
        return _build(name, obj.get("model_config"), obj["state_dict"], device, trained=obj, where=path)
    raise ValueError(f"{path}: neither an integrated model nor a stage checkpoint (no 'state_dict' key)")
