"""Training engines: one interface for plain DDP and (optionally) DeepSpeed.

An engine owns the wrapped model, the optimizer and the learning-rate schedule and offers
forward / accumulating / backward / step / state_dict / load_state_dict, and finish() once the
stage's last step is saved. The trainer never touches DDP or DeepSpeed directly; the optimizer
both engines build comes from `optim.py` (this package).
"""
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Iterator, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from mcl_dist.config.schema import TrainConfig
from mcl_dist.core import distributed as dist_utils
from mcl_dist.training.engine_deepspeed import DeepSpeedEngine
from mcl_dist.training.lr_schedule import scheduled_lr
from mcl_dist.training.optim import autocast_dtype, make_optimizer


def buffer_sync_kwargs(sync: bool, ddp=DistributedDataParallel) -> dict:
    """DDP's per-step buffer broadcast, on (BatchNorm statistics change every step) or off (CLIP's
    other buffers, attention masks, are constant; buffers still sync once at init). torch >= 2.13
    names the flag forward_sync_buffers and warns on broadcast_buffers; older torch (GPU images
    often ship one, e.g. 2.11) knows only broadcast_buffers and raises TypeError on the new name."""
    params = inspect.signature(ddp.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": sync}


class DDPEngine:
    name = "ddp"

    @staticmethod
    def check(cfg, where: str) -> None:
        """Every optimizer, scheduler and precision runs under DDP."""

    def __init__(self, model: torch.nn.Module, tcfg: TrainConfig, device: torch.device, total_steps: int,
                 base_lr: float):
        self.module = model
        self.device = device
        self.tcfg, self.total_steps, self.base_lr = tcfg, total_steps, base_lr
        self.model = model
        if dist_utils.is_distributed():
            ids = [device.index] if device.type == "cuda" else None
            has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
            self.model = DistributedDataParallel(model, device_ids=ids, **buffer_sync_kwargs(has_bn))
        self.optimizer = make_optimizer(model, tcfg, base_lr)
        self.dtype = autocast_dtype(tcfg.precision, device)
        # fp16 gradients underflow without loss scaling; open_clip_train's amp uses the same scaler
        self.scaler = torch.amp.GradScaler(device.type) if tcfg.precision == "amp" else None
        self.step_count = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def forward(self, *args: Any, **kw: Any) -> Any:
        with self.autocast():
            return self.model(*args, **kw)

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if last or not isinstance(self.model, DistributedDataParallel):
            yield
        else:
            with self.model.no_sync():
                yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> Optional[float]:
        """One optimizer step; the gradient norm when clipping measured it, else None (no extra sync)."""
        lr = scheduled_lr(self.tcfg, self.step_count, self.total_steps, self.base_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        norm = None
        if self.tcfg.grad_clip_norm > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, as open_clip_train does
            norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.tcfg.grad_clip_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step when a gradient is inf/nan, then lowers the scale
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.clamp_logit_scale()
        self.step_count += 1
        return norm

    def clamp_logit_scale(self) -> None:
        scale = getattr(self.module, "logit_scale", None)
        if scale is not None:
            with torch.no_grad():
                scale.clamp_(0, math.log(self.tcfg.logit_scale_max))

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": {"step": self.step_count}}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["scheduler"]["step"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def finish(self) -> None:
        """End of stage: the module is already a plain model, nothing to hand back."""


ENGINES = {cls.name: cls for cls in (DDPEngine, DeepSpeedEngine)}  # `train.engine`; each checks its settings


def build_engine(model: torch.nn.Module, tcfg: TrainConfig, device: torch.device, total_steps: int,
                 base_lr: float):
    return ENGINES[tcfg.engine](model, tcfg, device, total_steps, base_lr)
