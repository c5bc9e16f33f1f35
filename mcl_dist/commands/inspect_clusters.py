"""Cluster inspector: an image grid per cluster and each cluster's attribute purity.

    mcl-inspect-clusters RUN_DIR --stage S [--out DIR] [--source clusters|labels]
                                     [--per-cluster 8] [--max-clusters 64]

Reads RUN_DIR/stage_S/kmeans/assign*.npz (or stage_S/labels.npz with --source labels) and the
training shards' {key}.json records through the run's tar index, and writes
DIR/cluster_grid.png (a row of sample images per cluster, largest cluster first),
DIR/purity.md and DIR/purity.json (per cluster and attribute: the majority value and its share;
the size-weighted mean purity per attribute). DIR defaults to RUN_DIR/inspect/stage_S_<source>.
"""
import argparse
import sys

from mcl_dist.clustering.cluster_inspect import inspect_stage


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--stage", type=int, required=True, help="stage S >= 1 (stage S clusters stage S-1's embeddings)")
    p.add_argument("--out", default=None)
    p.add_argument("--source", choices=("clusters", "labels"), default="clusters",
                   help="k-means clusters of this stage, or its pseudo-labels (combined with earlier stages)")
    p.add_argument("--per-cluster", type=int, default=8)
    p.add_argument("--max-clusters", type=int, default=64, help="rows in the grid (the table lists all)")
    p.add_argument("--attributes", nargs="*", default=None, help="default: every field of the .json records")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        res = inspect_stage(args.run_dir, args.stage, args.out, source=args.source, per_group=args.per_cluster,
                            max_groups=args.max_clusters, seed=args.seed, attributes=args.attributes)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    attrs = list(res["mean_purity"])
    print(f"stage {args.stage} {args.source}: {len(res['groups'])} groups")
    print("mean purity: " + ", ".join(f"{a} {res['mean_purity'][a]:.2f} (chance {res['chance'][a]:.2f})" for a in attrs))
    print(f"wrote {res['files']['grid']}, {res['files']['markdown']}, {res['files']['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
