"""Atomic file writes and safe loads.

Every output of a run (checkpoints, embeddings, labels, manifests, results) goes through
these helpers so that a killed process never leaves a half-written file behind: we write a
temporary file in the same directory, fsync it, then rename it over the target.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator

import numpy as np
import torch

# tests (debug.kill_at=write:NAME): the job dies with NAME's temp file written; see kill_on_write
_KILL_ON_WRITE: dict = {"name": "", "kill": None}


def kill_on_write(name: str, kill: Callable[[], None]) -> None:
    """Tests: call `kill` (which must not return) once a file named like NAME is written to its
    temp file, before the rename. The caller passes the kill so that this module needs no other."""
    _KILL_ON_WRITE.update(name=name, kill=kill)


def fsync_dir(directory: str) -> None:
    """Make a rename durable: the new directory entry survives a power loss, not only the data."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) cannot fsync a directory
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if _KILL_ON_WRITE["name"] and _KILL_ON_WRITE["name"] in os.path.basename(path):
            _KILL_ON_WRITE["kill"]()
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with weights_only=True; a damaged file is a clear error."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from e


def write_json(obj: Any, path: str) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _same_text(text: str, path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == text
    except (OSError, UnicodeDecodeError):
        return False


def write_text(text: str, path: str) -> None:
    """Atomic; a file that already holds exactly this text is left alone (a finished run that is
    launched again writes nothing)."""
    if _same_text(text, path):
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def save_npz(path: str, **arrays: np.ndarray) -> None:
    """np.savez appends '.npz' to names without it, so write through a file object."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise RuntimeError(f"{path}: cannot read arrays ({type(e).__name__}: {e})") from e
