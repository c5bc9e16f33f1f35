"""Build (or validate) the random-access tar index that stages >= 1 read samples through.

    mcl-build-index --shards "/data/cc12m/{00000..01242}.tar" --cache-dir /data/cc12m/.index
    mcl-build-index --shards "a/{0..9}.tar::b/{0..3}.tar" --cache-dir idx --workers 8 --rebuild

Index files are cached per shard, so running this again only re-scans new or changed shards and a
killed build resumes. Exit status 2 for bad arguments (missing or remote shards, duplicate keys).
"""
import argparse
import logging
import sys
import time

from mcl_dist.commands import print_fields
from mcl_dist.config.schema import ConfigError
from mcl_dist.data.shards import expand_urls
from mcl_dist.data.tar_index import build_or_load_index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="brace pattern(s) of local tar shards, '::'-separated")
    p.add_argument("--cache-dir", required=True, help="folder for the per-shard index files")
    p.add_argument("--rebuild", action="store_true", help="re-scan every shard, ignoring the cache")
    p.add_argument("--workers", type=int, default=1, help="processes scanning shards in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.time()
    try:
        shards = expand_urls(args.shards, key="--shards")
        index = build_or_load_index(shards, args.cache_dir, rebuild=args.rebuild,
                                    progress=not args.quiet, workers=args.workers)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_fields({"shards": len(index.shards), "samples": len(index), "damaged shards": len(index.damaged)})
    for shard, (msg, lost) in index.damaged.items():
        print(f"  {shard}: it {msg}; about {lost} members lost (more if cut short)")
    print_fields({"fingerprint": index.fingerprint(), "time": f"{time.time() - t0:.1f}s"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
