"""Write the synthetic multi-attribute data: train/test webdataset shards, an MMVP-VLM folder and
zero-shot class lists (layout: mcl_dist/synthetic/trifeature.py). Re-running resumes / keeps finished work.

    mcl-make-synthetic --out data/synth --train 50000 --test 5000 --samples-per-shard 5000
    mcl-make-synthetic --out data/synth_noeasy --train 50000 --test 5000 --no-easy

Prints the brace-expanded shard patterns and the eval paths to paste into a config.
"""
import argparse
import sys

from mcl_dist.commands import print_fields
from mcl_dist.synthetic.trifeature import SyntheticSpec, ensure_demo_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2048, help="training samples")
    p.add_argument("--test", type=int, default=512, help="test samples")
    p.add_argument("--samples-per-shard", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--no-easy", action="store_true", help="hold the easy attributes constant (no shortcut)")
    p.add_argument("--count", action="store_true", help="add the 'count' attribute (1-4 objects; use --image-size 64)")
    p.add_argument("--mmvp-pairs", type=int, default=32, help="MMVP pairs per attribute")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    try:
        base = SyntheticSpec()
        spec = SyntheticSpec(image_size=a.image_size, no_easy=a.no_easy,
                             attributes=base.attributes + (("count",) if a.count else ()))
        paths = ensure_demo_data(a.out, n_train=a.train, n_test=a.test, seed=a.seed,
                                 samples_per_shard=a.samples_per_shard, spec=spec, mmvp_pairs=a.mmvp_pairs,
                                 progress=not a.quiet)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"easy attributes {paths['easy']} ({paths['easy_combinations']} combinations), hard {paths['hard']}")
    print_fields({"data.train_shards": paths["train"], "eval.test_shards": paths["test"], "eval.mmvp_dir": paths["mmvp"],
                  "eval.zero_shot_classes": paths["zero_shot"], "eval.label_fields": paths["label_fields"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
