#!/usr/bin/env python
"""FLOPs per sample of the recipes' training steps, counted on the meta device (no GPU, no
memory): mcl_dist/bench/flops.py. Prints JSON; --out writes it.

    python tools/bench_flops.py --out docs/bench/cpu/flops_recipes.json
"""
import argparse
import json

from mcl_dist.bench.flops import recipe_flops
from mcl_dist.core.files import write_json

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="")
    a = p.parse_args()
    res = {}
    for model in ("ViT-B-32", "ViT-L-14"):
        res[f"{model} full training"] = recipe_flops(model)
        res[f"{model} recipe (lock-text, lock-image 6 unlocked groups, QuickGELU)"] = recipe_flops(
            model, lock_image_unlocked_groups=6, lock_text=True)
    print(json.dumps(res, indent=1))
    if a.out:
        write_json(res, a.out)
