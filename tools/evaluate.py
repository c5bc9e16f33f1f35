#!/usr/bin/env python
"""`mcl-evaluate` as a script (mcl_dist/commands/evaluate.py); `mcl-evaluate --help` lists its options."""
import sys

from mcl_dist.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
