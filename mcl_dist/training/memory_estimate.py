"""An estimate of GPU memory per rank for one training stage, printed by the dry run.

    weights      every parameter, fp32 (DDP keeps fp32 weights; autocast casts per forward)
    gradients    the trainable parameters, fp32 (none for locked ones)
    optimizer    AdamW's two fp32 moments (LARS: one) per trainable parameter (none for locked ones)
    activations  micro-batch x the bytes autograd saves per sample, from ACTIVATIONS

DeepSpeed ZeRO splits the optimizer state (stage >= 1), the gradients (>= 2) and the weights (3)
over the ranks. ACTIVATIONS is measured by tools/measure_activations.py (docs/bench/activations.json:
image and text tower, 16-bit autocast, bytes per sample); a tower's share is scaled by the share of
its parameters that train (a locked layer saves nothing for backward, in a partly locked tower the
locked layers come first), and doubled in fp32. QuickGELU (`model.force_quick_gelu`, or a
`-quickgelu` name) has its own rows: it saves ~24% more than GELU (x, its sigmoid and the
product). With `model.grad_checkpointing` the `*_checkpointed` figures are used: every block's
input plus one block recomputed in the backward pass.

The warning for a stage that does not fit names only settings that were tried here and work:
each is applied to the config, must pass the run's own checks (check_world: batch divisibility,
group sizes) and must bring every stage under the GPU's memory (`fixes`).
Check against the H200 run in docs/bench/gpu/gpu_check_h200.json:
ViT-B-32 (151,277,313 parameters, all training), 256 per rank, amp_bf16: estimate 10.0 GiB,
measured peak 11.6 GiB (torch.cuda.max_memory_allocated; the rest is the loss, gathers and the
allocator).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from mcl_dist.config.load import check_world
from mcl_dist.config.schema import Config, ConfigError, micro_batch_size

GIB = float(1 << 30)
# tools/measure_activations.py on open_clip 3.x (docs/bench/activations.json)
ACTIVATIONS = {
    "ViT-B-32": {"image": 15316256, "text": 17235488, "image_checkpointed": 3530656, "text_checkpointed": 5209936},
    "ViT-B-32-quickgelu": {"image": 19002656, "text": 21020192, "image_checkpointed": 3837856, "text_checkpointed": 5525328},
    "ViT-B-16": {"image": 59460944, "text": 17235488, "image_checkpointed": 13025680, "text_checkpointed": 5209936},
    "ViT-B-16-quickgelu": {"image": 73985360, "text": 21020192, "image_checkpointed": 14236048, "text_checkpointed": 5525328},
    "ViT-L-14": {"image": 204490640, "text": 25845216, "image_checkpointed": 35063904, "text_checkpointed": 7813664},
    "ViT-L-14-quickgelu": {"image": 255018896, "text": 31522272, "image_checkpointed": 37169248, "text_checkpointed": 8286752},
    "RN50": {"image": 49952000, "text": 17235488, "image_checkpointed": 49952000, "text_checkpointed": 5209936},
    "RN50-quickgelu": {"image": 49952000, "text": 21020192, "image_checkpointed": 49952000, "text_checkpointed": 5525328},
}
# the memory torch.cuda reports for each GPU (GiB), for --gpu
GPUS = {"h200": 139.8, "h100": 79.1, "a100-80gb": 79.2, "a100-40gb": 39.4}
DEFAULT_GPU = "a100-80gb"  # the 80 GB class most clusters have; --gpu names another


def row_name(name: str, quick_gelu: bool = False) -> str:
    """The ACTIVATIONS row for a model as it trains: QuickGELU saves more, so it has its own rows."""
    base = name.removesuffix("-quickgelu")
    return f"{base}-quickgelu" if quick_gelu or name.endswith("-quickgelu") else base


def table_entry(name: str, quick_gelu: bool = False, checkpointed: bool = False) -> Optional[dict]:
    """{'image': bytes, 'text': bytes} per sample for the model as it trains, or None (not measured)."""
    row = ACTIVATIONS.get(row_name(name, quick_gelu))
    if row is None:
        return None
    suffix = "_checkpointed" if checkpointed else ""
    if any(f"{t}{suffix}" not in row for t in ("image", "text")):
        return None
    return {t: row[f"{t}{suffix}"] for t in ("image", "text")}


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
    entry = table_entry(model["name"], cfg.model.force_quick_gelu, cfg.model.grad_checkpointing)
    if entry is not None:
        per_sample = sum(entry[tower] * share for tower, share in model["tower_shares"][stage].items())
        out["activations"] = micro * per_sample * (2 if t.precision == "fp32" else 1)
    out["total"] = sum(v for v in out.values() if v is not None)
    return out


def trained_stages(cfg: Config) -> list[int]:
    return [s for s, st in enumerate(cfg.stages) if not (s == 0 and st.pretrained)]


def peak_gib(cfg: Config, model: dict[str, Any], world: int) -> float:
    """The largest stage's estimate (GiB per rank) at this config and world size."""
    micro = micro_batch_size(cfg, world)
    return max(stage_memory(cfg, model, s, micro, world)["total"] for s in trained_stages(cfg)) / GIB


def _passes(cfg: Config, world: int) -> bool:
    try:
        check_world(cfg, world)
    except ConfigError:
        return False
    return True


def fixes(cfg: Config, model: dict[str, Any], world: int, gib: float, max_world_factor: int = 8) -> list[dict]:
    """Settings that bring every stage under `gib`, each tried: the changed config passes the
    run's checks at its world size and its estimate fits. Each: {'setting', 'world', 'cfg', 'gib'}
    where `setting` is what to type (a key=value override or a rank count)."""
    out = []
    if not cfg.model.grad_checkpointing:
        c = replace(cfg, model=replace(cfg.model, grad_checkpointing=True))
        if table_entry(model["name"], c.model.force_quick_gelu, True) is not None and peak_gib(c, model, world) <= gib:
            out.append({"setting": "model.grad_checkpointing=true", "world": world, "cfg": c,
                        "gib": peak_gib(c, model, world)})
    t = cfg.train
    for accum in range(t.accum_freq + 1, t.global_batch_size // world + 1):
        c = replace(cfg, train=replace(t, accum_freq=accum))
        if t.global_batch_size % (world * accum) or not _passes(c, world):
            continue
        if peak_gib(c, model, world) <= gib:
            out.append({"setting": f"train.accum_freq={accum}", "world": world, "cfg": c, "gib": peak_gib(c, model, world)})
            break
    for w in range(world + 1, world * max_world_factor + 1):
        if t.global_batch_size % (w * t.accum_freq) or not _passes(cfg, w):
            continue
        if peak_gib(cfg, model, w) <= gib:
            out.append({"setting": f"{w} ranks", "world": w, "cfg": cfg, "gib": peak_gib(cfg, model, w)})
            break
    return out


def _advice(cfg: Config, model: dict[str, Any], world: int, gpu: str) -> str:
    found = fixes(cfg, model, world, GPUS[gpu])
    if found:
        return "these fit (each checked): " + "; ".join(
            f"{f['setting']} (~{f['gib']:.0f} GiB, micro-batch {micro_batch_size(f['cfg'], f['world'])})" for f in found)
    return (f"no single setting fits (tried model.grad_checkpointing=true, a larger train.accum_freq and up to "
            f"{world * 8} ranks, each with the run's checks): use a GPU with more memory")


def memory_lines(cfg: Config, model: dict[str, Any], micro: int, world: int, gpu: Optional[str]) -> tuple[list, list]:
    """(lines, warnings): one line per trained stage; a warning where a stage exceeds the GPU
    (`gpu`, else DEFAULT_GPU), with the settings that were checked to fit."""
    lines, warnings = [], []
    name = gpu or DEFAULT_GPU
    quick = cfg.model.force_quick_gelu or model["name"].endswith("-quickgelu")
    row = row_name(model["name"], quick)
    measured = table_entry(model["name"], quick, cfg.model.grad_checkpointing) is not None
    for s in trained_stages(cfg):
        m = stage_memory(cfg, model, s, micro, world)
        act = (f"activations {m['activations'] / GIB:.1f}" if m["activations"] is not None
               else f"activations not estimated ({row} is not in the measured table)")
        lines.append(f"  stage {s}: weights {m['weights'] / GIB:.1f} + gradients {m['gradients'] / GIB:.1f} + "
                     f"optimizer {m['optimizer'] / GIB:.1f} + {act} = {m['total'] / GIB:.1f} GiB")
        if m["total"] / GIB > GPUS[name]:
            warnings.append(f"stage {s} needs ~{m['total'] / GIB:.0f} GiB per rank (micro-batch {micro} of "
                            f"{model['name']}), more than the {GPUS[name]:.0f} GiB of one {name}")
    if warnings:
        warnings[-1] += f"; {_advice(cfg, model, world, name)}"
    if measured and quick:
        lines.append("  (activations measured with QuickGELU)")
    if measured and cfg.model.grad_checkpointing:
        lines.append("  (model.grad_checkpointing: block inputs + one block recomputed)")
    return lines, warnings
