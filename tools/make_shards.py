#!/usr/bin/env python
"""`mcl-make-shards` as a script (mcl_dist/commands/make_shards.py); `mcl-make-shards --help` lists its options."""
import sys

from mcl_dist.commands.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
