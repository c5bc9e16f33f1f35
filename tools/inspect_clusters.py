#!/usr/bin/env python
"""`mcl-inspect-clusters` as a script (mcl_dist/commands/inspect_clusters.py); `mcl-inspect-clusters --help` lists its options."""
import sys

from mcl_dist.commands.inspect_clusters import main

if __name__ == "__main__":
    sys.exit(main())
