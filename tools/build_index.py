#!/usr/bin/env python
"""`mcl-build-index` as a script (mcl_dist/commands/build_index.py); `mcl-build-index --help` lists its options."""
import sys

from mcl_dist.commands.build_index import main

if __name__ == "__main__":
    sys.exit(main())
