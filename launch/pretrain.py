#!/usr/bin/env python
"""Run the whole MCL pipeline: stage 0, then embed -> k-means -> pseudo-labels -> train per stage,
then the integrated model, evaluation and report.

    torchrun --nproc_per_node N launch/pretrain.py --config FILE [--run-dir DIR] [key=value ...]
    python launch/pretrain.py --config FILE --dry-run [--world-size N] [key=value ...]

Re-running the same command resumes where it stopped (see <run_dir>/manifest.json).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mcl_dist.cli import main  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, steps, batch per rank, memory, paths) and exit; writes nothing")
    p.add_argument("--world-size", type=int, default=None,
                   help="with --dry-run: plan for this many ranks (default: torchrun's WORLD_SIZE or 1)")
    p.add_argument("--redo", default="", metavar="STEP",
                   help="recompute STEP (e.g. stage_1/kmeans) and every step after it")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 stages.1.k=64")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(main(args.config, args.run_dir, args.overrides, dry_run=args.dry_run, world_size=args.world_size,
                  redo=args.redo))
