#!/usr/bin/env python
"""Activation memory per training sample of open_clip models: the bytes autograd saves for the
backward pass in one forward of the image tower and of the text tower, under 16-bit autocast,
measured as (saved bytes at batch B2 - saved bytes at batch B1) / (B2 - B1), so the weights'
autocast copies, which do not grow with the batch, drop out. Runs on a CPU (bf16 autocast saves
tensors of the same shapes and width as fp16 autocast on a GPU); writes the table that
mcl_dist/memory_estimate.py keeps (ACTIVATIONS) and the dry run uses.

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
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50"])
    p.add_argument("--out", default="docs/bench/activations.json")
    a = p.parse_args()
    torch.manual_seed(0)
    table = {}
    for name in a.models:
        model = open_clip.create_model(name, pretrained=None)
        model.train()
        table[name] = {k: round(v) for k, v in per_sample(model, name).items()}
        print(f"{name}: image {table[name]['image'] / 2**20:.1f} MiB, text {table[name]['text'] / 2**20:.1f} MiB "
              f"per sample (16-bit autocast)", flush=True)
    with open(a.out, "w") as f:
        json.dump({"unit": "bytes saved for backward per sample, 16-bit autocast", "models": table}, f, indent=1)


if __name__ == "__main__":
    main()
