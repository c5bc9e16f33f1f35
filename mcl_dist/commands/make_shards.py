"""Write webdataset shards (img2dataset's CC12M layout) from a folder or a CSV/TSV.

    mcl-make-shards --csv data.csv --out shards/ [--image-col filepath --caption-col title]
    mcl-make-shards --folder images/ --out shards/   # a.jpg + a.txt pairs
    mcl-make-shards --synthetic --out data/demo      # the demo's synthetic data

Prints the brace-expanded shard pattern to put into `data.train_shards`.
"""
import argparse
import os
import sys

from mcl_dist.data.writer import pairs_from_folder, pairs_from_table, write_pair_shards
from mcl_dist.synthetic.trifeature import ensure_demo_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV/TSV with an image-path column and a caption column")
    src.add_argument("--folder", help="folder of images with same-named .txt captions")
    src.add_argument("--synthetic", action="store_true", help="write the synthetic multi-attribute data")
    p.add_argument("--out", required=True)
    p.add_argument("--samples-per-shard", type=int, default=10000)
    p.add_argument("--prefix", default="")
    p.add_argument("--image-col", default="filepath")
    p.add_argument("--caption-col", default="title")
    p.add_argument("--train", type=int, default=2048, help="synthetic: training samples")
    p.add_argument("--test", type=int, default=512, help="synthetic: test samples")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.synthetic:

        paths = ensure_demo_data(a.out, n_train=a.train, n_test=a.test, seed=a.seed,
                                 samples_per_shard=a.samples_per_shard)
        for k, v in paths.items():
            print(f"{k}: {v}")
        return 0

    try:
        pairs = pairs_from_table(a.csv, a.image_col, a.caption_col) if a.csv else pairs_from_folder(a.folder)
        res = write_pair_shards(pairs, a.out, samples_per_shard=a.samples_per_shard, prefix=a.prefix)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(res["shards"])
    print(f"wrote {res['samples']} samples into {n} shards ({res['skipped']} skipped: missing or not an image)")
    if n:
        print(f"data.train_shards: {os.path.join(a.out, a.prefix)}{{00000..{n - 1:05d}}}.tar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
