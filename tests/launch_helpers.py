"""Launch helpers the fault tests share: the real entry point under a 2-rank torchrun (bounded,
killed as a whole on a hang) or in this process, the error lines of a launch, and the small
two-stage pipeline config the kill-point and fault-row tests run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import ROOT, free_port, launch_env

# seconds per launch (generous: a loaded 2-core machine): a hang fails the test, never stalls it
TIMEOUT = int(os.environ.get("MCL_TEST_LAUNCH_TIMEOUT", "900"))


def _descendants(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts every rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def run2(cfg: str, run_dir, *overrides, redo: str = "") -> subprocess.CompletedProcess:
    """launch/pretrain.py under a 2-rank torchrun (gloo), killed as a whole on a hang: the real one
    for `debug.kill_at` (it kills the launcher), else ranks forked from a warm process (forked_ranks.py)."""
    import forked_ranks

    args = ["launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir), *overrides, *(["--redo", redo] if redo else [])]
    if forked_ranks.wanted(args):
        return forked_ranks.launch(args, timeout=TIMEOUT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=launch_env())
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in _descendants(proc.pid):  # the launcher, its ranks and their loader workers
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        out, err = proc.communicate()
        raise AssertionError(f"launch did not end within {TIMEOUT}s (a hang):\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_here(cfg: str, run_dir, *overrides, redo: str = "") -> int:
    """The real entry point in this process (world size 1): what `python launch/pretrain.py` does."""
    from mcl_dist.commands.pretrain import launch

    return launch(cfg, str(run_dir), list(overrides), redo=redo)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


PIPE_CFG = """
data: {{synthetic: true, synthetic_dir: {data}, synthetic_train: 64, synthetic_test: 32,
        synthetic_samples_per_shard: 16, workers: 1, shuffle_buffer: 16}}
model: {{config_file: {root}/configs/models/tiny-vit.json}}
train: {{global_batch_size: 16, max_steps: 3, lr: 1.0e-3, warmup_steps: 1, log_every: 1, checkpoint_every: 1}}
cluster: {{kmeans_iters: 4, kmeans_tol: 0.0, min_label_size: 2, embed_batch_size: 32}}
stages: [{{}}, {{k: 3, group_size: 4}}]
eval: {{probe_max_samples: 32, batch_size: 32}}
"""
