"""An estimate of GPU memory per rank for one training stage, printed by the dry run.

    weights      every parameter, fp32 (DDP keeps fp32 weights; autocast casts per forward)
    gradients    the trainable parameters, fp32 (none for locked ones)
    optimizer    AdamW's two fp32 moments (LARS: one) per trainable parameter (none for locked ones)
    activations  micro-batch x the bytes autograd saves per sample, from ACTIVATIONS

DeepSpeed ZeRO splits the optimizer state (stage >= 1), the gradients (>= 2) and the weights (3)
over the ranks. ACTIVATIONS is measured by tools/measure_activations.py (docs/bench/activations.json:
image and text tower, 16-bit autocast, bytes per sample); a tower's share is scaled by the share of
its parameters that train (a locked layer saves nothing for backward, in a partly locked tower the
locked layers come first), and doubled in fp32. Gradient checkpointing is not modelled: with it the
activation figure is an upper bound. Check against the H200 run in docs/bench/gpu/gpu_check_h200.json:
ViT-B-32 (151,277,313 parameters, all training), 256 per rank, amp_bf16: estimate 10.0 GiB,
measured peak 11.6 GiB (torch.cuda.max_memory_allocated; the rest is the loss, gathers and the
allocator).
"""
from __future__ import annotations

from typing import Any, Optional

from mcl_dist.config import Config

GIB = float(1 << 30)
# tools/measure_activations.py on open_clip 3.x (docs/bench/activations.json)
ACTIVATIONS = {
    "ViT-B-32": {"image": 15316256, "text": 17235488},
    "ViT-B-16": {"image": 59460944, "text": 17235488},
    "ViT-L-14": {"image": 204490640, "text": 25845216},
    "RN50": {"image": 49952000, "text": 17235488},
}
# the memory torch.cuda reports for each GPU (GiB), for --gpu
GPUS = {"h200": 139.8, "h100": 79.1, "a100-80gb": 79.2, "a100-40gb": 39.4}
DEFAULT_GPU = "a100-80gb"  # the 80 GB class most clusters have; --gpu names another


def table_entry(name: str) -> Optional[dict]:
    base = name[: -len("-quickgelu")] if name.endswith("-quickgelu") else name
    return ACTIVATIONS.get(base)


def stage_memory(cfg: Config, model: dict[str, Any], stage: int, micro: int, world: int) -> dict[str, Any]:
    """Bytes per rank for stage `stage`: weights, gradients, optimizer, activations (None: not in the table)."""
    t = cfg.train
    trainable = model["trainable"][stage]
    moments = 1 if t.optimizer == "lars" else 2
    zero = t.zero_stage if t.engine == "deepspeed" else 0
    split = {part: world if zero >= level else 1 for part, level in (("optimizer", 1), ("gradients", 2), ("weights", 3))}
    out: dict[str, Any] = {
        "weights": 4 * model["params"] / split["weights"],
        "gradients": 4 * trainable / split["gradients"],
        "optimizer": 4 * moments * trainable / split["optimizer"],
        "activations": None,
    }
    entry = table_entry(model["name"])
    if entry is not None:
        per_sample = sum(entry[tower] * share for tower, share in model["tower_shares"][stage].items())
        out["activations"] = micro * per_sample * (2 if t.precision == "fp32" else 1)
    out["total"] = sum(v for v in out.values() if v is not None)
    return out


def memory_lines(cfg: Config, model: dict[str, Any], micro: int, world: int, gpu: Optional[str]) -> tuple[list, list]:
    """(lines, warnings): one line per trained stage; a warning where a stage exceeds the GPU
    (`gpu`, else DEFAULT_GPU)."""
    lines, warnings = [], []
    name = gpu or DEFAULT_GPU
    for s, st in enumerate(cfg.stages):
        if s == 0 and st.pretrained:
            continue
        m = stage_memory(cfg, model, s, micro, world)
        act = (f"activations {m['activations'] / GIB:.1f}" if m["activations"] is not None
               else f"activations not estimated ({model['name']} is not in the measured table)")
        lines.append(f"  stage {s}: weights {m['weights'] / GIB:.1f} + gradients {m['gradients'] / GIB:.1f} + "
                     f"optimizer {m['optimizer'] / GIB:.1f} + {act} = {m['total'] / GIB:.1f} GiB")
        if m["total"] / GIB > GPUS[name]:
            warnings.append(f"stage {s} needs ~{m['total'] / GIB:.0f} GiB per rank (micro-batch {micro} of "
                            f"{model['name']}), more than the {GPUS[name]:.0f} GiB of one {name}: raise "
                            f"train.accum_freq, use more ranks, or set model.grad_checkpointing=true")
    if cfg.model.grad_checkpointing:
        lines.append("  (model.grad_checkpointing: the activations are an upper bound)")
    return lines, warnings
