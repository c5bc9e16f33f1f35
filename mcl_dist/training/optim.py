"""The optimizer side of training, shared by both engines: parameter groups, AdamW or LARS,
and the autocast dtype.

    param_groups    no weight decay on gains, biases and the logit scale (as open_clip_train)
    make_optimizer  `train.optimizer`: AdamW (fused when it can be) or LARS
    adamw           the AdamW both engines build, from `train.beta1/beta2/eps`
    LARS            SimCLR's large-batch optimizer (You et al. 2017)
    autocast_dtype  `train.precision` -> the autocast dtype (None: fp32; amp -> float16)

The schedules the trainer runs are in `lr_schedule.py`.
"""
from __future__ import annotations

import torch

from mcl_dist.config.origins import blame
from mcl_dist.config.registry import Choice
from mcl_dist.config.schema import Config, ConfigError, TrainConfig


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """No weight decay on gains, biases and the logit scale (as open_clip_train does)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def adamw(groups: list[dict], tcfg: TrainConfig, base_lr: float, fused: bool | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=base_lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps, fused=fused)


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig, base_lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[tcfg.optimizer].build(param_groups(model, tcfg.wd), tcfg, base_lr)


def _check_betas(cfg: Config, where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(cfg.train, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{blame(where, f'train.{key}', 'train.optimizer')}: 'train.{key}' must be in [0, 1) for train.optimizer={cfg.train.optimizer}, "
                              f"got {value}")


def _check_adamw(cfg: Config, where: str) -> None:
    _check_betas(cfg, where, ("beta1", "beta2"))
    if cfg.train.eps <= 0:
        raise ConfigError(f"{blame(where, 'train.eps', 'train.optimizer')}: 'train.eps' must be positive for train.optimizer=adamw, got {cfg.train.eps}")


def _lars(groups: list[dict], tcfg: TrainConfig, base_lr: float) -> torch.optim.Optimizer:
    return LARS(groups, lr=base_lr, momentum=tcfg.beta1, weight_decay=tcfg.wd)


def _fused_adamw(groups: list[dict], tcfg: TrainConfig, base_lr: float) -> torch.optim.Optimizer:
    # the fused kernel does one pass over all parameters: ~9x faster than foreach on CPU for the tiny
    # models (whose 49k-token embedding dominates), and supported on CUDA too
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return adamw(groups, tcfg, base_lr, fused=fused or None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision as run: "auto" is amp_bf16 on a GPU, fp32 on a CPU."""
    if precision == "auto":
        return "amp_bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    precision = resolve_precision(precision, device)
    if precision == "amp":  # open_clip_train's --precision amp: fp16 autocast, with a GradScaler (engine.py)
        return torch.float16
    return torch.bfloat16 if precision in ("amp_bf16", "bf16") else None


class LARS(torch.optim.Optimizer):
    """SGD with momentum where each weight matrix's step is scaled by trust * ||w|| / ||g + wd w||.

    Parameters in a group with weight_decay 0 (gains, biases: see `param_groups`) are updated by
    plain momentum SGD, as in SimCLR's reference implementation.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6, trust: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] > 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.norm(p), torch.linalg.norm(grad)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), group["trust"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    grad = grad.mul(ratio)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


# `train.optimizer` (LARS's momentum is train.beta1)
OPTIMIZERS = {"adamw": Choice(_fused_adamw, _check_adamw),
              "lars": Choice(_lars, lambda cfg, where: _check_betas(cfg, where, ("beta1",)))}
