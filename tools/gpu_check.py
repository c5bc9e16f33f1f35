#!/usr/bin/env python
"""The GPU check (mcl_dist/gpu_check.py): whether the GPU path works and how fast, in one run.

    torchrun --nproc_per_node 8 tools/gpu_check.py [--out gpu_check.json]
    torchrun --nproc_per_node 2 tools/gpu_check.py --cpu-smoke
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mcl_dist import distributed  # noqa: E402
from mcl_dist.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    code = main()
    distributed.destroy()
    sys.exit(code)
