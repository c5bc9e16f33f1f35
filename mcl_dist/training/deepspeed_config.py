"""The DeepSpeed side of `train.engine=deepspeed` that needs no model: importing DeepSpeed, the
settings it cannot run (checked when the config loads), and its JSON config derived from our
`train.*` settings plus the optional raw `train.deepspeed_config` (mcl_dist/training/engine_deepspeed.py
runs the engine)."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from mcl_dist.config.origins import blame
from mcl_dist.config.schema import Config, ConfigError, TrainConfig
from mcl_dist.training.optim import autocast_dtype

INSTALL_HINT = ("install the optional extra with `pip install -e .[deepspeed]`, or after torch: "
                "`DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed==0.19.8`")
# keys the trainer owns: a raw DeepSpeed JSON may repeat them only with the same value
_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
_REFUSED = ("optimizer", "scheduler")
# our DeepSpeed engine casts inputs to bf16 and has no loss scaler: fp16 would need DeepSpeed's own
# fp16 optimizer wrapper, which our checkpoint layout does not handle
DEEPSPEED_AMP = ("'train.precision' amp (fp16 with a loss scaler) is not supported with train.engine=deepspeed; "
                 "use train.precision=amp_bf16 (bf16 needs no loss scaler) or train.engine=ddp")


def import_deepspeed(device: torch.device):
    """Import DeepSpeed, choosing its accelerator from our device; a clear error if missing."""
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if device.type == "cuda" else "cpu"
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError(f"train.engine=deepspeed needs DeepSpeed, which is not importable ({e}); "
                          f"{INSTALL_HINT}") from e
    # DeepSpeed logs every config key at INFO on its own logger; keep warnings
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if device.type == "cpu" and os.environ.get("MCL_DS_SHM_COMM", "0") != "1":
        # On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op on first use (1-2 minutes,
        # cached in ~/.cache/torch_extensions). CPU runs are tests and demos, where gloo is fast
        # enough: mark the op unavailable so DeepSpeed uses gloo. MCL_DS_SHM_COMM=1 keeps the op.
        from deepspeed import ops

        ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_ds_config(tcfg: TrainConfig, world_size: int, device: torch.device) -> dict:
    """The DeepSpeed config derived from our train settings (+ the optional raw JSON)."""
    if tcfg.precision == "amp":  # autocast_dtype would give fp16, which the bf16 switch below cannot express
        raise ConfigError(DEEPSPEED_AMP)
    micro = tcfg.global_batch_size // (world_size * tcfg.accum_freq)
    bf16 = autocast_dtype(tcfg.precision, device) is not None
    cfg: dict[str, Any] = {
        "train_batch_size": tcfg.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": tcfg.accum_freq,
        "gradient_clipping": float(tcfg.grad_clip_norm),
        "zero_optimization": {"stage": tcfg.zero_stage},
        "bf16": {"enabled": bf16},
        # our torch AdamW (the DDP engine's numerics and checkpoint layout), with offloading too
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if bf16 and tcfg.zero_stage == 0:
        raise ConfigError("train.engine=deepspeed with train.zero_stage=0 and bf16 is not supported (DeepSpeed would "
                          "accumulate gradients in bf16); use train.zero_stage=1, 2 or 3, or train.engine=ddp "
                          "(AMP bf16)")
    if tcfg.deepspeed_config:
        path = tcfg.deepspeed_config
        if not os.path.exists(path):
            raise ConfigError(f"train.deepspeed_config: {path}: file not found")
        try:
            with open(path) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"train.deepspeed_config: {path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"train.deepspeed_config: {path}: must hold a JSON object")
        for key in _REFUSED:
            if key in raw:
                raise ConfigError(f"train.deepspeed_config: {path}: remove the '{key}' section; the optimizer and "
                                  f"the LR schedule come from train.lr, train.wd, train.warmup_steps, ...")
        for key in _OWNED:
            if key in raw and raw[key] not in ("auto", cfg[key]):
                raise ConfigError(f"train.deepspeed_config: {path}: '{key}' is {raw[key]} but train.global_batch_size, "
                                  f"train.accum_freq and the world size ({world_size}) give {cfg[key]}; drop the key "
                                  f"or set it to \"auto\"")
        raw = {k: v for k, v in raw.items() if k not in _OWNED}
        cfg = _merge(cfg, raw)
    return cfg


def check_settings(cfg: Config, where: str) -> None:
    """What DeepSpeed cannot run with our settings, refused when the config loads."""
    t = cfg.train
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"{blame(where, 'train.zero_stage')}: 'train.zero_stage' must be 0, 1, 2 or 3, "
                          f"got {t.zero_stage}")
    if t.optimizer != "adamw":
        raise ConfigError(f"{blame(where, 'train.engine', 'train.optimizer')}: train.engine=deepspeed runs AdamW "
                          f"only (its ZeRO partitions hold AdamW's moments); got train.optimizer={t.optimizer}: use train.engine=ddp for it")
    if t.precision == "amp":
        raise ConfigError(f"{blame(where, 'train.engine', 'train.precision')}: {DEEPSPEED_AMP}")
    if t.zero_stage == 0 and t.precision in ("bf16", "amp_bf16"):
        raise ConfigError(f"{blame(where, 'train.engine', 'train.zero_stage', 'train.precision')}: "
                          f"train.engine=deepspeed with train.zero_stage=0 and bf16 is not supported "
                          f"(DeepSpeed would accumulate gradients in bf16); use train.zero_stage=1, 2 or 3, or "
                          f"train.engine=ddp (AMP bf16)")
