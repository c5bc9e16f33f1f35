"""What a step wrote, recorded and checked: sizes and content checksums of every output file.

A finished step's manifest record carries `files`: each output file under the run directory (path
relative to it) with its size and a checksum. Before a step is skipped as done, and before a
later step runs on it, those files are checked; a file that is gone, has another size or other
content is one error naming the file and the `--redo` that recomputes it. Small files are hashed
whole; large ones (checkpoints of real models, embedding parts of CC12M) by their size plus three
1 MiB windows (start, middle, end), which catches truncation and rewrites at the cost of 3 MiB of
reading, not gigabytes.

Settings that name a file (model.config_file, ...) are fingerprinted by the file's content, so
editing the file is a changed setting like any other.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

from mcl_dist.data.preflight import DataError
from mcl_dist.data.shards import expand_urls, is_local, local_path

WHOLE = 64 << 20  # files up to this size are hashed whole
WINDOW = 1 << 20


class DamagedOutput(DataError):
    """A recorded output that is missing or changed; every rank finds the same."""


def checksum(path: str) -> str:
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= WHOLE:
            for chunk in iter(lambda: f.read(WINDOW), b""):
                h.update(chunk)
        else:
            for at in (0, size // 2, size - WINDOW):
                f.seek(at)
                h.update(f.read(WINDOW))
    return h.hexdigest()[:16]


def _files(paths: Iterable[str]) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                out += [os.path.join(root, n) for n in sorted(names) if not n.endswith(".tmp")]
        elif os.path.isfile(p):
            out.append(p)
    return out


def record(run_dir: str, paths: Iterable[str]) -> dict[str, dict]:
    """{relative path: {"size", "sum"}} of every file under `paths` (files or folders)."""
    return {os.path.relpath(p, run_dir): {"size": os.path.getsize(p), "sum": checksum(p)} for p in _files(paths)}


def problem(run_dir: str, rel: str, want: dict) -> str:
    """'' when the file matches its record, else what is wrong with it."""
    path = os.path.join(run_dir, rel)
    if not os.path.isfile(path):
        return "is missing"
    size = os.path.getsize(path)
    if size != want["size"]:
        return f"has {size} bytes, {want['size']} when it was written"
    if checksum(path) != want["sum"]:
        return "has changed since it was written (checksum differs)"
    return ""


def check_step(run_dir: str, name: str, rec: dict[str, Any]) -> None:
    """Raise DamagedOutput for the first recorded file of step `name` that is missing or changed."""
    for rel, want in sorted((rec.get("files") or {}).items()):
        found = problem(run_dir, rel, want)
        if found:
            raise DamagedOutput(f"{os.path.join(run_dir, rel)} {found}: the output of step {name} is damaged; "
                                f"recover with --redo {name} (it recomputes that step and every later one)")


def file_settings(named: dict[str, str]) -> dict[str, str]:
    """{setting: content hash} for settings that name a local file (a tag or URL is left out:
    its name is already in the settings)."""
    return {k: checksum(v) for k, v in sorted(named.items()) if v and os.path.isfile(v)}



def model_files(cfg: Any) -> dict[str, str]:
    """Content hashes of the files a training step's settings name (the model, its weights, DeepSpeed)."""
    return file_settings({"model.config_file": cfg.model.config_file, "model.pretrained": cfg.model.pretrained,
                          "stages.0.pretrained": cfg.stages[0].pretrained,
                          "train.deepspeed_config": cfg.train.deepspeed_config})


def eval_files(cfg: Any) -> dict[str, Any]:
    """The evaluation's class names and MMVP questions by content; its test shards by size and
    modification time (hashing whole shard sets on every launch would cost more than it saves); a
    shard not there (yet: the dry run plans before any data exists) is recorded as None."""
    ev = cfg.eval
    out: dict[str, Any] = file_settings({"eval.zero_shot_classes": ev.zero_shot_classes,
                                         "eval.mmvp_dir": os.path.join(ev.mmvp_dir, "Questions.csv") if ev.mmvp_dir else ""})
    if ev.test_shards:
        shards = [local_path(u) for u in expand_urls(ev.test_shards, key="eval.test_shards") if is_local(u)]
        out["eval.test_shards"] = [[os.path.getsize(p), os.stat(p).st_mtime_ns] if os.path.isfile(p) else None
                                   for p in shards]
    return out
