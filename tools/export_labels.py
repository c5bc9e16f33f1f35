#!/usr/bin/env python
"""`mcl-export-labels` as a script (mcl_dist/commands/export_labels.py); `mcl-export-labels --help` lists its options."""
import sys

from mcl_dist.commands.export_labels import main

if __name__ == "__main__":
    sys.exit(main())
