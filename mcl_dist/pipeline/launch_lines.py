"""The commands that launch a planned run, printed by the dry run: a `torchrun` line for one node
(c10d rendezvous over several nodes) and an `sbatch` line for the templates in launch/slurm/."""
from __future__ import annotations

import math
import shlex
import sys

GPUS_PER_NODE = 8  # launch/slurm/*.sbatch ask for 8 GPUs a node


def pretrain_args(config: str, run_dir: str, overrides: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["launch/pretrain.py", "--config", config, "--run-dir", run_dir,
                                              *overrides])


def layout(world: int) -> tuple[int, int]:
    """(nodes, processes per node): full nodes of GPUS_PER_NODE, or one node for fewer ranks."""
    nodes = max(1, math.ceil(world / GPUS_PER_NODE))
    if world % nodes:
        raise ValueError(f"{world} ranks do not split evenly over {nodes} nodes")
    return nodes, world // nodes


def launch_lines(config: str, run_dir: str, overrides: list[str], world: int) -> list[str]:
    args = pretrain_args(config, run_dir, overrides)
    # the job runs the python that planned it (launch/slurm/*.sbatch read MCL_PYTHON; sbatch passes the
    # environment on), so the line works from a login node without the venv on PATH
    env = f"MCL_PYTHON={shlex.quote(sys.executable)} "
    try:
        nodes, per_node = layout(world)
    except ValueError as e:
        return [f"  ({e}: no launch line; plan a multiple of {GPUS_PER_NODE} ranks)"]
    if nodes == 1:
        gpus = "" if per_node == GPUS_PER_NODE else f"--gpus-per-node={per_node} "
        return [f"  torchrun --standalone --nproc_per_node {per_node} {args}",
                f"  {env}sbatch {gpus}launch/slurm/single_node.sbatch {args.split(' ', 1)[1]}"]
    return [f"  torchrun --nnodes {nodes} --nproc_per_node {per_node} --rdzv_backend c10d "
            f"--rdzv_endpoint HEAD_NODE:29500 --rdzv_id mcl {args}   (on each of the {nodes} nodes)",
            f"  {env}sbatch --nodes={nodes} launch/slurm/multi_node.sbatch {args.split(' ', 1)[1]}"]
