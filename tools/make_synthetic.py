#!/usr/bin/env python
"""`mcl-make-synthetic` as a script (mcl_dist/commands/make_synthetic.py); `mcl-make-synthetic --help` lists its options."""
import sys

from mcl_dist.commands.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
