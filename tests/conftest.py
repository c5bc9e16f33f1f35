"""Shared fixtures: tiny real webdataset shards, the tiny model config, torchrun helpers."""
from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mcl_dist.core.distributed import free_port  # noqa: F401 (the tests import it from conftest)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
SHAPES = ("square", "bar")


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_test_shards(out_dir: str, n_shards: int = 4, per_shard: int = 32, seed: int = 0,
                      corrupt: tuple = (), no_caption: tuple = (), prefix: str = "s") -> list[str]:
    """Coloured squares/bars with captions; `corrupt`/`no_caption` are global sample indices."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths, i = [], 0
    for s in range(n_shards):
        path = os.path.join(out_dir, f"{prefix}{s:05d}.tar")
        with wds.TarWriter(path) as sink:
            for _ in range(per_shard):
                color = list(COLORS)[rng.integers(len(COLORS))]
                shape = SHAPES[rng.integers(2)]
                arr = np.full((32, 32, 3), 255, np.uint8)
                if shape == "square":
                    arr[8:24, 8:24] = COLORS[color]
                else:
                    arr[4:28, 13:19] = COLORS[color]
                sample = {"__key__": f"{prefix}{i:06d}", "png": png_bytes(arr),
                          "json": json.dumps({"color": color, "shape": shape})}
                if i in corrupt:
                    sample["png"] = sample["png"][:40]  # a truncated image
                if i not in no_caption:
                    sample["txt"] = f"a {color} {shape}"
                sink.write(sample)
                i += 1
        paths.append(path)
    return paths


def pytest_collection_modifyitems(config, items):
    """Longest files first (tests/fixtures/file_seconds.json, tools/test_file_seconds.py): the workers
    take whole files in this order, and a long file taken last kept one worker busy alone for
    minutes. A stable sort: each file's tests keep their order and stay together."""
    path = os.path.join(ROOT, "tests", "fixtures", "file_seconds.json")
    secs = json.load(open(path)) if os.path.exists(path) else {}
    items.sort(key=lambda item: -secs.get(os.path.relpath(str(item.path), ROOT), 0))


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    return write_test_shards(str(d))


DEMO = os.path.join(ROOT, "configs/demo.yaml")
# the demo made tiny: fewer samples and steps, two stages
DEMO_OVERRIDES = [f"model.config_file={ROOT}/configs/models/tiny-vit.json", "data.synthetic_train=512",
                  "data.synthetic_test=96", "data.synthetic_samples_per_shard=64", "train.max_steps=2",
                  "train.global_batch_size=32", "stages=[{}, {k: 4, group_size: 8}]"]


def run_demo(cwd, *overrides: str) -> list[str]:
    """configs/demo.yaml as the README's demo runs it (in-process, one rank, from `cwd`: runs/demo and
    data/demo land there) with DEMO_OVERRIDES and `overrides`; returns the overrides it used."""
    from mcl_dist.commands.pretrain import main

    old, over = os.getcwd(), [*DEMO_OVERRIDES, *overrides]
    os.chdir(cwd)
    try:
        rc = main(["--config", DEMO, *over])
    finally:
        os.chdir(old)
    assert rc == 0
    return over


@pytest.fixture(scope="session")
def demo_eval_off(tmp_path_factory):
    """A finished tiny demo run with eval.enabled=false (shared: test_export_clip_benchmark, test_layout)."""
    cwd = tmp_path_factory.mktemp("demo")
    run_demo(cwd, "eval.enabled=false")
    return cwd  # the run directory is cwd/runs/demo


def launch_env(extra: dict | None = None) -> dict:
    """The environment of a test launch's ranks: one thread each (torchrun's default), no GPU."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", **(extra or {})}


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300, env: dict | None = None,
             check: bool = True, real: bool = False) -> subprocess.CompletedProcess:
    """Run launch/pretrain.py (or another script) under torchrun with gloo on CPU: the real one, or
    for launch/pretrain.py ranks forked from a warm process (tests/forked_ranks.py says when and why).
    real: always the real torchrun (a test of what the user sees from fresh processes)."""
    import forked_ranks

    if not real and forked_ranks.wanted(args):
        proc = forked_ranks.launch(args, nproc=nproc, env=env, timeout=timeout)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", *args]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=launch_env(env))
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def rank_exit_codes(proc: subprocess.CompletedProcess) -> list[int]:
    """Each failed rank's own exit code: torchrun exits 1 whatever they were and lists them in its
    failure summary (`exitcode  : 2`); a forked launch (tests/forked_ranks.py) keeps them."""
    if hasattr(proc, "rank_codes"):
        return proc.rank_codes
    return [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)]


def tiny_config(tmp_path, shards: list[str], **extra) -> str:
    """A YAML config for the tiny ViT on the given shards; extra keys are dotted overrides."""
    import yaml

    cfg = {"data": {"train_shards": "::".join(shards), "workers": 1, "shuffle_buffer": 16},
           "model": {"config_file": os.path.join(ROOT, "configs/models/tiny-vit.json")},
           "train": {"global_batch_size": 16, "max_steps": 6, "lr": 1e-3, "warmup_steps": 2,
                     "log_every": 2, "checkpoint_every": 3, "seed": 0},
           "stages": [{}], "eval": {"enabled": False}}
    for key, value in extra.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path = os.path.join(str(tmp_path), "cfg.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Reference: open_clip_train's `cosine` schedule (linear warm-up, then cosine decay to zero)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base_lr
