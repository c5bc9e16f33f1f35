#!/usr/bin/env python
"""The GPU check (mcl_dist/bench/gpu_check.py, also `mcl-gpu-check`): whether the GPU path works and how fast.

    torchrun --standalone --nproc_per_node 8 tools/gpu_check.py [--out gpu_check.json]
    torchrun --standalone --nproc_per_node 2 tools/gpu_check.py --cpu-smoke
"""
import sys

from mcl_dist.bench.gpu_check import command

if __name__ == "__main__":
    sys.exit(command())
