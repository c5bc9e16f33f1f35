#!/usr/bin/env python
"""What the drift test (tests/test_bench_drift.py) pins: the benchmark's data generated at a small
size, per family and per part (decoded pixels, file bytes, captions, attribute records, pair
images), and the metrics of one short seeded benchmark run (losses per stage, pair and probe
accuracies). A change of code or of a package (numpy and Pillow render and encode the images;
torch trains) that moves a result then fails the test, naming the part that moved.

    python tools/bench_suppression_drift.py            # print the current values
    python tools/bench_suppression_drift.py --write    # store them (after a change meant to move them)
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORED = os.path.join(ROOT, "tests", "fixtures", "bench_drift.json")
RUN = ("A", "mcl2_prev:0")  # the short seeded run: smoke scale, 2 stages (k-means, labels, integration)


def _h(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:16]


def data_parts(family: str, root: str) -> dict:
    """{part: digest} of one family's data at a small size: 16 training samples, 2 pairs per attribute."""
    from PIL import Image

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from bench_suppression_arms import family_specs
    from mcl_dist.synthetic.trifeature import write_mmvp_pairs, write_synthetic_shards

    spec = dict(family_specs(family))["main"]
    shard = write_synthetic_shards(os.path.join(root, family), n_samples=16, samples_per_shard=16, seed=0, spec=spec,
                                   progress=False)[0]
    parts = {"png": [], "pixels": [], "captions": [], "attributes": []}
    with tarfile.open(shard) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            data = tar.extractfile(m).read()
            if m.name.endswith(".png"):
                parts["png"].append(data)
                parts["pixels"].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tobytes())
            else:
                parts["captions" if m.name.endswith(".txt") else "attributes"].append(data)
    folder = write_mmvp_pairs(os.path.join(root, family + "_pairs"), spec=spec, n_pairs_per_attribute=2, seed=101)
    jpgs = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".jpg"))
    parts["pair_jpg"] = [open(p, "rb").read() for p in jpgs]
    parts["pair_pixels"] = [np.asarray(Image.open(p).convert("RGB")).tobytes() for p in jpgs]
    parts["pair_statements"] = [open(os.path.join(folder, "Questions.csv"), "rb").read()]
    return {k: _h(*v) for k, v in parts.items()}


def _python(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def run_metrics(tmp: str, python=_python) -> dict:
    """The short run's numbers: each stage's loss at its first and last step, each model's pair
    accuracy on both splits and the integrated model's linear probe, rounded to 4 decimals.
    python(argv, env): runs `python ARGV...` from the repository root and returns its
    CompletedProcess (the test passes one that forks from a warm process)."""
    fam, run = RUN
    argv = [os.path.join(ROOT, "tools", "bench_feature_suppression.py"), "--scale", "smoke", "--seeds", "0",
            "--family", fam, "--out", os.path.join(tmp, "run"), "--data-dir", os.path.join(tmp, "data"),
            "--arms", "baseline", "--runs", run]
    proc = python(argv, dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    if proc.returncode:
        raise RuntimeError(f"error: the drift run failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    arm, seed = run.split(":")
    rec = json.load(open(os.path.join(tmp, "run", "records", f"{arm}_s{seed}.json")))
    out = {}
    for s, st in sorted(rec["stages"].items()):
        out[f"stage_{s} loss_start"] = round(st["signals"]["loss_start"], 4)
        out[f"stage_{s} loss_end"] = round(st["signals"]["loss_end"], 4)
    for split in ("val", "test"):
        for model, per in rec["pairs"][split].items():
            if model != "_sets":
                out[f"{split} {model} pairs"] = round(float(np.mean([v.count("1") / len(v) for v in per.values()])), 4)
    for a, m in rec["models"]["integrated"].items():
        out[f"integrated {a} probe"] = round(m["probe"], 4)
    out["data digest"] = rec["provenance"]["data_digest"][:16]
    return out


def current() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {"data": {fam: data_parts(fam, tmp) for fam in ("A", "B", "C")}, "run": run_metrics(tmp)}


def moved(stored: dict, now: dict, tol: float = 2e-3) -> list[str]:
    """What differs, by name: a data part of a family, or a run metric (numbers within `tol`)."""
    out = []
    for fam, parts in stored["data"].items():
        for part, digest in parts.items():
            if now["data"].get(fam, {}).get(part) != digest:
                out.append(f"data {fam} {part}: {digest} -> {now['data'].get(fam, {}).get(part)}")
    for key, v in stored["run"].items():
        w = now["run"].get(key)
        if isinstance(v, str) or w is None or isinstance(w, str):
            if w != v:
                out.append(f"run {key}: {v} -> {w}")
        elif abs(w - v) > tol:
            out.append(f"run {key}: {v} -> {w}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"store the current values in {os.path.relpath(STORED, ROOT)}")
    args = p.parse_args(argv)
    now = current()
    print(json.dumps(now, indent=1))
    if args.write:
        from mcl_dist.core.files import write_json

        write_json(now, STORED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
