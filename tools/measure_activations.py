#!/usr/bin/env python
"""Activation memory per training sample of open_clip models: the bytes autograd saves for the
backward pass in one forward of the image tower and of the text tower, under 16-bit autocast,
measured as (saved bytes at batch B2 - saved bytes at batch B1) / (B2 - B1), so the weights'
autocast copies, which do not grow with the batch, drop out. Runs on a CPU (bf16 autocast saves
tensors of the same shapes and width as fp16 autocast on a GPU); writes the table that
mcl_dist/training/memory_estimate.py keeps (ACTIVATIONS) and the dry run uses. `-quickgelu` names are
measured as such (QuickGELU saves more than GELU: x, the sigmoid and the product).

With gradient checkpointing (`<tower>_checkpointed`) open_clip recomputes each residual block in
the backward pass, so what stays is the input of every block (measured by a hook on the blocks),
what is saved outside the blocks, and, at the peak, one block's saved tensors while it is
recomputed: (all saved - saved outside the blocks) / blocks.

    python tools/measure_activations.py [--models ViT-B-32 ViT-L-14 RN50] [--out docs/bench/activations.json]
"""
from __future__ import annotations

import argparse
import json

import open_clip
import torch


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensor storages autograd saves while `fn` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn()
    return sum(seen.values())


def _blocks(model, tower: str) -> list:
    """The residual blocks open_clip checkpoints in a tower ([] for a ResNet tower)."""
    owner = model.visual if tower == "image" else model
    return list(getattr(getattr(owner, "transformer", None), "resblocks", []))


def block_inputs(fn, blocks: list) -> int:
    """Bytes of the inputs of `blocks` during `fn` (what gradient checkpointing keeps)."""
    total = [0]
    hooks = [b.register_forward_pre_hook(lambda mod, args: total.__setitem__(0, total[0] + args[0].nbytes))
             for b in blocks]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn()
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def per_sample_checkpointed(model, name: str, full: dict[str, float], b1: int = 1, b2: int = 3) -> dict[str, float]:
    """Per-sample bytes with gradient checkpointing: kept block inputs + what is saved outside the
    blocks + one block's saved tensors (its recomputation in the backward pass)."""
    model.set_grad_checkpointing(True)
    try:
        ckpt = per_sample(model, name, b1, b2)
        out = {}
        for tower, make, enc in _towers(model, name):
            blocks = _blocks(model, tower)
            if not blocks:  # nothing is checkpointed in this tower
                out[f"{tower}_checkpointed"] = full[tower]
                continue
            kept = [block_inputs(lambda n=n: enc(make(n)), blocks) for n in (b1, b2)]
            one_block = (full[tower] - ckpt[tower]) / len(blocks)
            out[f"{tower}_checkpointed"] = ckpt[tower] + (kept[1] - kept[0]) / (b2 - b1) + one_block
        return out
    finally:
        model.set_grad_checkpointing(False)


def _towers(model, name: str) -> list:
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    tok = open_clip.get_tokenizer(name)
    return [("image", lambda b: torch.randn(b, 3, size, size), model.encode_image),
            ("text", lambda b: tok(["a photo of a thing"] * b), model.encode_text)]


def per_sample(model, name: str, b1: int = 1, b2: int = 3) -> dict[str, float]:
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    tok = open_clip.get_tokenizer(name)
    out = {}
    for tower, make, enc in (("image", lambda b: torch.randn(b, 3, size, size), model.encode_image),
                             ("text", lambda b: tok(["a photo of a thing"] * b), model.encode_text)):
        a, b = (saved_bytes(lambda n=n: enc(make(n))) for n in (b1, b2))
        out[tower] = (b - a) / (b2 - b1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-B-16-quickgelu",
                                                   "ViT-L-14", "ViT-L-14-quickgelu", "RN50", "RN50-quickgelu"])
    p.add_argument("--out", default="docs/bench/activations.json")
    a = p.parse_args()
    torch.manual_seed(0)
    table = {}
    for name in a.models:
        model = open_clip.create_model(name, pretrained=None)
        model.train()
        full = per_sample(model, name)
        table[name] = {k: round(v) for k, v in {**full, **per_sample_checkpointed(model, name, full)}.items()}
        print(f"{name}: image {table[name]['image'] / 2**20:.1f} MiB, text {table[name]['text'] / 2**20:.1f} MiB "
              f"per sample (16-bit autocast); checkpointed {table[name]['image_checkpointed'] / 2**20:.1f} / "
              f"{table[name]['text_checkpointed'] / 2**20:.1f} MiB", flush=True)
    with open(a.out, "w") as f:
        json.dump({"unit": "bytes saved for backward per sample, 16-bit autocast; *_checkpointed: with open_clip's "
                           "gradient checkpointing (block inputs + outside the blocks + one block recomputed)",
                   "models": table}, f, indent=1)


if __name__ == "__main__":
    main()
