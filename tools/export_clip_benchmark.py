#!/usr/bin/env python
"""`mcl-export-clip-benchmark` as a script (mcl_dist/commands/export_clip_benchmark.py); `mcl-export-labels --help` lists its options."""
import sys

from mcl_dist.commands.export_clip_benchmark import main

if __name__ == "__main__":
    sys.exit(main())
