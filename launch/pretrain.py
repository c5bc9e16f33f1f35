#!/usr/bin/env python
"""Run the whole MCL pipeline (the `mcl-pretrain` command; see mcl_dist/commands/pretrain.py):

    torchrun --standalone --nproc_per_node N launch/pretrain.py --config FILE [--run-dir DIR] [key=value ...]
    python launch/pretrain.py --config FILE --dry-run [--world-size N] [key=value ...]
"""
import sys

from mcl_dist.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
