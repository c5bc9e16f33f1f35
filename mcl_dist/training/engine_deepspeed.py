"""DeepSpeed engine (ZeRO stage 0-3) behind the same interface as `mcl_dist.training.engine.DDPEngine`.

The DeepSpeed config is derived from our `train.*` settings (mcl_dist/training/deepspeed_config.py; the
mapping is tabled in docs/cluster.md; fp16 `amp` is refused at load), so there is no second config file to keep in sync. The optimizer is
the DDP engine's AdamW with `optim.param_groups`; the lr is `lr_schedule.scheduled_lr`, set before
every step. An optional raw DeepSpeed JSON (`train.deepspeed_config`) is merged over that; keys
the trainer owns (batch sizes, accumulation steps) must agree with ours, and `optimizer` /
`scheduler` sections are refused: they would silently replace the schedule the trainer logs.

Gradient accumulation: `engine.accumulating(last)` maps onto
`set_gradient_accumulation_boundary(last)`, so DeepSpeed reduces gradients only on the last
micro-batch and `step()` applies one optimizer step per trainer step. The trainer already divides
the loss by `accum_freq`, so `backward` passes `scale_wrt_gas=False`.

Checkpoints are *consolidated*: `state_dict()` (a collective) assembles the full fp32 master
weights and AdamW moments from the ZeRO partitions in `torch.optim.AdamW.state_dict()`'s layout,
so a checkpoint of either engine resumes under either, at any world size and ZeRO stage, and
open_clip loads it as is. `finish()`, which the trainer calls after the stage's last step, hands
the module back as a plain fp32 model with the full master weights (ZeRO-3 partitions gathered,
bf16 copies replaced), so the stage checkpoint the pipeline writes sees an ordinary model.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator, Optional

import torch

from mcl_dist.config.schema import TrainConfig
from mcl_dist.core import distributed as dist_utils
from mcl_dist.training.deepspeed_config import build_ds_config, check_settings, import_deepspeed
from mcl_dist.training.lr_schedule import scheduled_lr
from mcl_dist.training.optim import adamw, param_groups

log = logging.getLogger("mcl_dist")

_ADAM_KEYS = ("exp_avg", "exp_avg_sq")


class DeepSpeedEngine:
    name = "deepspeed"
    check = staticmethod(check_settings)  # at config load

    def __init__(self, model: torch.nn.Module, tcfg: TrainConfig, device: torch.device, total_steps: int,
                 base_lr: float):
        self.deepspeed = import_deepspeed(device)
        utils = self.deepspeed.utils
        self._get_fp32, self._set_fp32 = utils.safe_get_full_fp32_param, utils.safe_set_full_fp32_param
        self._get_state, self._set_state = utils.safe_get_full_optimizer_state, utils.safe_set_full_optimizer_state
        self.module, self.device = model, device
        self.tcfg, self.total_steps, self.base_lr = tcfg, total_steps, base_lr
        self.ds_config = build_ds_config(tcfg, dist_utils.world_size(), device)
        self.zero_stage = int(self.ds_config["zero_optimization"].get("stage", 0))
        self.bf16 = bool(self.ds_config.get("bf16", {}).get("enabled"))
        groups = param_groups(model, tcfg.wd)
        # the parameters in optimizer order, as torch's AdamW.state_dict numbers them
        self._ordered = [p for g in groups for p in g["params"]]
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._shapes = {n: p.shape for n, p in model.named_parameters()}
        self.optimizer = adamw(groups, tcfg, base_lr)
        self._group_meta = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self._group_sizes = [len(g["params"]) for g in groups]
        self._hooks = self._promote_scalars()
        dist_utils.ensure_process_group(device)  # DeepSpeed needs one even for one process
        self.ds, ds_opt, _, _ = self.deepspeed.initialize(model=model, optimizer=self.optimizer,
                                                           config=self.ds_config, dist_init_required=False)
        self.ds_optimizer = ds_opt
        if dist_utils.rank() == 0:
            log.info("engine: DeepSpeed %s, ZeRO stage %d, %s, micro-batch %d x %d accumulation step(s)",
                     self.deepspeed.__version__, self.zero_stage, "bf16" if self.bf16 else "fp32",
                     self.ds_config["train_micro_batch_size_per_gpu"], self.ds_config["gradient_accumulation_steps"])
        self.step_count = 0
        self.finished = False
        self._lr = base_lr

    def _promote_scalars(self) -> list:
        """Hold 0-dim parameters (CLIP's logit_scale) as shape (1,) while DeepSpeed owns the model.

        DeepSpeed 0.19 broadcasts and gathers parameters as `p.data.view(torch.uint8)`, which torch
        refuses for 0-dim tensors. The same Parameter objects are reshaped in place; state_dict and
        load_state_dict hooks keep the module's checkpoint layout exactly open_clip's, and `finish()`
        restores the shapes.
        """
        scalars = {n for n, p in self.module.named_parameters() if p.dim() == 0}
        for n, p in self.module.named_parameters():
            if n in scalars:
                p.data = p.data.reshape(1)
        engine = self

        def save_hook(module, state_dict, prefix, local_metadata):
            for n in scalars:
                if prefix + n in state_dict and state_dict[prefix + n].numel() == 1:
                    state_dict[prefix + n] = state_dict[prefix + n].reshape(())

        def load_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
            for n, p in module.named_parameters():
                key = prefix + n
                if key not in state_dict:
                    continue
                if n in scalars:
                    state_dict[key] = state_dict[key].reshape(1)
                if engine.zero_stage == 3 and hasattr(p, "ds_id"):
                    # a partitioned ZeRO-3 parameter: load_state_dict() leaves it alone (it only holds
                    # this rank's shard); engine.load_state_dict writes the full value into the shards
                    state_dict[key] = p.data

        return [self.module.register_state_dict_post_hook(save_hook),
                self.module.register_load_state_dict_pre_hook(load_hook)]

    # -- forward / backward / step --------------------------------------------------------
    def _cast(self, x: Any) -> Any:
        if self.bf16 and torch.is_tensor(x) and x.is_floating_point():
            return x.to(torch.bfloat16)
        return x

    def forward(self, *args: Any, **kw: Any) -> Any:
        if self.finished:
            raise RuntimeError("the DeepSpeed engine finished its stage; build a new engine to train on")
        return self.ds(*[self._cast(a) for a in args], **{k: self._cast(v) for k, v in kw.items()})

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Only the last micro-batch of a step is an accumulation boundary (reduce + step)."""
        self.ds.set_gradient_accumulation_boundary(bool(last))
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)  # the trainer already divided by accum_freq

    def step(self) -> Optional[float]:
        self._lr = scheduled_lr(self.tcfg, self.step_count, self.total_steps, self.base_lr)
        for g in self.optimizer.param_groups:  # the base optimizer ZeRO steps on its flat partitions
            g["lr"] = self._lr
        self.ds.set_gradient_accumulation_boundary(True)
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        self.clamp_logit_scale()
        self.step_count += 1
        return float(norm) if norm is not None else None

    @property
    def lr(self) -> float:
        return self._lr

    # -- parameter access across ZeRO stages ----------------------------------------------
    @contextlib.contextmanager
    def _gathered(self, params: list, modifier_rank: int | None = None) -> Iterator[None]:
        if self.zero_stage == 3 and not self.finished:
            with self.deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
                yield
        else:
            yield

    def _full_fp32(self, p: torch.nn.Parameter) -> torch.Tensor:
        """The full fp32 master value of a parameter (a collective for ZeRO-partitioned ones)."""
        if not self.finished and p.requires_grad:
            full = self._get_fp32(p)
            if full is not None:
                return full.detach().float()
        with self._gathered([p]):
            return p.detach().float().clone()

    @staticmethod
    def _mapped(p: torch.nn.Parameter) -> bool:
        """Whether ZeRO / DeepSpeed's bf16 optimizer keeps this parameter's master elsewhere."""
        return hasattr(p, "_hp_mapping") or hasattr(p, "ds_id")

    def _moment(self, p: torch.nn.Parameter, key: str) -> torch.Tensor:
        if self._mapped(p):
            return self._get_state(p, key)
        return self.optimizer.state[p][key]  # ZeRO stage 0 in fp32: our AdamW on the real parameters

    @staticmethod
    def _z3_set(p: torch.nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
        """This rank's shard of a ZeRO-3 master (key=None) or optimizer state, from the full value.

        DeepSpeed's own `safe_set_full_*` cuts the full tensor without the padding of the last
        shard, which fails whenever a parameter's size is not a multiple of the world size.
        """
        opt = p._z3_optimizer
        part, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
        n, world = part.numel(), opt._get_param_partition_world_size(p)
        flat = torch.zeros(n * world, dtype=part.dtype, device=part.device)
        flat[: value.numel()] = value.flatten().to(part.device, part.dtype)
        part.data.copy_(flat.narrow(0, n * opt._get_param_partition_rank(p), n))

    def _set_moment(self, p: torch.nn.Parameter, value: torch.Tensor, key: str) -> None:
        if hasattr(p, "ds_id"):
            self._z3_set(p, value, key)
        elif self._mapped(p):
            self._set_state(p, value, key)
        else:
            self.optimizer.state[p][key].copy_(value.reshape(p.shape))

    def _write_param(self, p: torch.nn.Parameter, value: torch.Tensor) -> None:
        """Set the master value (if any) and the model's own copy of a parameter on every rank."""
        if not self.finished and p.requires_grad:
            if hasattr(p, "ds_id"):
                self._z3_set(p, value)
            else:
                self._set_fp32(p, value.to(self.device, torch.float32))
        with self._gathered([p], modifier_rank=0), torch.no_grad():
            p.data.copy_(value.to(p.data.device, p.data.dtype).reshape(p.data.shape))

    def clamp_logit_scale(self) -> None:
        scale = getattr(self.module, "logit_scale", None)
        if scale is None:
            return
        full = self._full_fp32(scale)  # the same value on every rank, so the branch is collective
        clamped = full.clamp(0, math.log(self.tcfg.logit_scale_max))
        if not torch.equal(clamped, full):
            self._write_param(scale, clamped)

    # -- end of stage ---------------------------------------------------------------------
    def finish(self) -> None:
        """End of stage: give the module back as a plain fp32 model with the full master weights
        (a collective). The engine cannot train on after it."""
        if self.finished:
            return
        values = {n: self._full_fp32(p) for n, p in self.module.named_parameters()}
        self.ds.destroy()  # removes DeepSpeed's hooks (ZeRO-3 fetch/release, gradient hooks)
        self.finished = True
        for hook in self._hooks:
            hook.remove()
        for n, p in self.module.named_parameters():
            p.data = values[n].reshape(self._shapes[n]).to(p.data.device)
        for buf in self.module.buffers():
            if buf.is_floating_point() and buf.dtype != torch.float32:
                buf.data = buf.data.float()

    # -- checkpoints ----------------------------------------------------------------------
    def _step_tensor(self) -> torch.Tensor | None:
        """AdamW's step count (ZeRO keys our AdamW's state by its flat fp32 partitions)."""
        for st in self.optimizer.state.values():
            if "step" in st:
                return st["step"].detach().cpu().clone() if torch.is_tensor(st["step"]) else torch.tensor(float(st["step"]))
        return None

    def state_dict(self) -> dict:
        """Consolidated weights + AdamW state (torch layout); a collective, the result is rank 0's."""
        main = dist_utils.rank() == 0
        weights = {}
        for n, p in self.module.named_parameters():
            v = self._full_fp32(p)
            if main:
                weights[n] = v.cpu().reshape(self._shapes[n])
        step = self._step_tensor()
        state: dict[int, dict] = {}
        if step is not None:
            self._link_optimizer_state()
            for i, p in enumerate(self._ordered):
                moments = {k: self._moment(p, k) for k in _ADAM_KEYS}
                if main:
                    shape = weights[self._names[id(p)]].shape
                    state[i] = {"step": step.clone(), **{k: v.detach().float().cpu().reshape(shape)
                                                         for k, v in moments.items()}}
        if not main:
            return {}
        # the module's buffers (and frozen parameters) come with the module's own state_dict
        sd = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        sd.update({k: v for k, v in weights.items() if k in sd})
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        groups, start = [], 0
        for meta, size in zip(self._group_meta, self._group_sizes):
            groups.append({**meta, "lr": self._lr, "params": list(range(start, start + size))})
            start += size
        return {"state_dict": sd, "optimizer": {"state": state, "param_groups": groups},
                "scheduler": {"step": self.step_count}, "engine": {"name": self.name, "zero_stage": self.zero_stage}}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a consolidated checkpoint of either engine, at any world size."""
        weights = state["state_dict"]
        for n, p in self.module.named_parameters():
            if n in weights:
                self._write_param(p, weights[n])
        opt = state.get("optimizer") or {}
        saved = opt.get("state") or {}
        n_saved = sum(len(g["params"]) for g in opt.get("param_groups", []))
        if n_saved and n_saved != len(self._ordered):
            raise RuntimeError(f"checkpoint optimizer has {n_saved} parameters, this model trains "
                               f"{len(self._ordered)}; was a tower locked or unlocked since?")
        if saved:
            step = next(iter(saved.values()))["step"]
            self._init_optimizer_state(step)
            for i, p in enumerate(self._ordered):
                entry = saved.get(i, saved.get(str(i)))
                if entry is None:
                    continue
                for k in _ADAM_KEYS:
                    self._set_moment(p, entry[k].to(self.device, torch.float32), k)
        self.step_count = int(state["scheduler"]["step"])
        self._lr = scheduled_lr(self.tcfg, max(0, self.step_count - 1), self.total_steps, self.base_lr)

    def _init_optimizer_state(self, step: torch.Tensor) -> None:
        """Create AdamW's lazily made state on the flat partitions so it can be filled in now."""
        base = self.optimizer
        flats = getattr(self.ds_optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
        if flats is None:
            flats = [p for g in base.param_groups for p in g["params"]]
        for p in flats:
            st = base.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32)
                for k in _ADAM_KEYS:
                    st[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] = step.detach().to(st["step"].device, st["step"].dtype).clone()
        self._link_optimizer_state()

    def _link_optimizer_state(self) -> None:
        """Point every parameter's fragment at the optimizer state of its flat partition.

        ZeRO-1/2 (and the bf16 optimizer) link the fragments once, after the first step of the
        first parameter group, when the other groups have no state yet; relinking is cheap views.
        """
        opt = self.ds_optimizer
        if hasattr(opt, "_hp_optimizer_states_linked") and hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
            opt._hp_optimizer_states_linked = False
            opt._lazy_init_hp_params_optimizer_state()
