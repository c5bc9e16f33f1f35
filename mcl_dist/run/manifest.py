"""`<run_dir>/manifest.json`: every pipeline step's status, outputs and fingerprints.

A step's fingerprint hashes the config values it depends on plus its inputs' fingerprints, so a
change anywhere upstream changes every step after it. Re-running skips steps that are done with
the same fingerprint, and refuses (with the changed keys) to continue past a finished step whose
settings changed: outputs of different configs or data are never mixed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from typing import Any, Optional

import mcl_dist
from mcl_dist.config.schema import ConfigError
from mcl_dist.core.files import read_json, write_json
from mcl_dist.core.layout import manifest_path


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(mcl_dist.__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{mcl_dist.__version__}+{sha}" if sha else mcl_dist.__version__


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def diff_settings(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


class Manifest:
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = manifest_path(run_dir)
        self.data = _load(self.path) if os.path.exists(self.path) else {"steps": {}, "order": []}

    def save(self) -> None:
        self.data["code_version"] = code_version()
        write_json(self.data, self.path)

    def step(self, name: str) -> Optional[dict]:
        return self.data["steps"].get(name)

    def is_done(self, name: str, settings: dict) -> bool:
        """True if `name` finished with these settings; an error if it finished with others."""
        rec = self.step(name)
        if rec is None or rec.get("status") != "done":
            return False
        if rec["fingerprint"] != fingerprint(settings):
            changes = diff_settings(rec.get("settings", {}), settings)
            shown = "; ".join(changes[:8]) or "its inputs (an earlier step) changed"
            raise ConfigError(
                f"{self.path}: step '{name}' already finished with different settings ({shown}). "
                f"Refusing to mix outputs of different configs or data in one run directory. "
                f"To start fresh, use a new --run-dir (or delete {self.run_dir}); to recompute this "
                f"step and every later one here, add --redo {name}; to keep the old results, revert "
                f"the change.")
        return True

    def check_running(self, name: str, settings: dict) -> None:
        """An interrupted step resumes from its partial outputs (parts, checkpoints): only with the
        settings it started with."""
        rec = self.step(name)
        if rec is None or rec.get("status") != "running" or rec["fingerprint"] == fingerprint(settings):
            return
        changes = diff_settings(rec.get("settings", {}), settings)
        shown = "; ".join(changes[:8]) or "its inputs (an earlier step) changed"
        raise ConfigError(
            f"{self.path}: step '{name}' was interrupted while running with different settings ({shown}); "
            f"resuming would reuse its partial outputs. Revert the change to resume it, or add "
            f"--redo {name} to recompute it (and every later step) with the new settings.")

    def start(self, name: str, settings: dict) -> None:
        self.data["steps"][name] = {"status": "running", "fingerprint": fingerprint(settings),
                                    "settings": settings, "started_at": time.time(), "outputs": {}}
        if name not in self.data["order"]:
            self.data["order"].append(name)
        self.save()

    def finish(self, name: str, outputs: dict, **extra: Any) -> None:
        """Record the step as done; paths inside the run directory are stored relative to it, so a
        copied or moved run directory still names its own files."""
        rec = self.data["steps"][name]
        rec.update(status="done", outputs=_relative(outputs, self.run_dir), finished_at=time.time(), **extra)
        self.save()


def _relative(value: Any, run_dir: str) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v, run_dir) for k, v in value.items()}
    if isinstance(value, str) and os.path.isabs(value) and \
            os.path.abspath(value).startswith(os.path.abspath(run_dir) + os.sep):
        return os.path.relpath(value, run_dir)
    return value


def _load(path: str) -> dict:
    """The manifest, or one error saying it is damaged and what to do (never a traceback)."""
    try:
        data = read_json(path)
        ok = isinstance(data, dict) and isinstance(data.get("steps"), dict) and isinstance(data.get("order"), list) \
            and all(isinstance(r, dict) and "status" in r and "fingerprint" in r for r in data["steps"].values())
    except (ValueError, OSError, UnicodeDecodeError) as e:
        ok, data = False, str(e)
    if not ok:
        raise ConfigError(f"{path} is damaged (not the manifest this program writes); it is the record of which "
                          f"steps are done, so nothing in {os.path.dirname(path)} can be trusted without it. "
                          f"Restore it from a copy, or start afresh with a new --run-dir (or delete the directory)")
    return data
