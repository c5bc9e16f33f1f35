#!/usr/bin/env python
"""Run the v2 protocol's benchmark runs one at a time, in priority order, skipping every run that
already has a record: start it in the background and any later session finishes the set.

    nohup nice -n 10 python tools/bench_suppression_queue.py > /work/bench_logs/queue.log 2>&1 &
    python tools/bench_suppression_queue.py --list      # what is recorded and what is still to run

Order: per seed (0, then 1, then 2), families A and B: the baseline, the recipe's trained arm
(4 stages, K 64), its random-label control; then family C's same runs (the final report's); then
the no-cluster controls. Run dirs and data live outside the repository (--root, default
/work/bench_runs), records in docs/bench/records/bench_v2_<family>_cpu (commit them).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_suppression_protocol import CONTROLS, STORE  # noqa: E402

RECIPE_ARM = "mcl4_prev_k64"


def queue(seeds=(0, 1, 2), controls_last: bool = False) -> list[tuple[str, str, int]]:
    """(family, arm, seed) in run order. controls_last: every seed's baseline and recipe before any
    random-label control, so a session too short for the whole set still gets every seed's ratio."""
    main = ["baseline", RECIPE_ARM, CONTROLS[RECIPE_ARM][0]]
    if controls_last:
        out = [(fam, arm, sd) for fam in ("A", "B", "C") for sd in seeds for arm in main[:2]]
        out += [(fam, main[2], sd) for fam in ("A", "B", "C") for sd in seeds]
        out += [(fam, CONTROLS[RECIPE_ARM][1], sd) for sd in seeds for fam in ("A", "B", "C")]
        return out
    out = [(fam, arm, sd) for sd in seeds for fam in ("A", "B") for arm in main]
    out += [("C", arm, sd) for sd in seeds for arm in main]
    out += [(fam, CONTROLS[RECIPE_ARM][1], sd) for sd in seeds for fam in ("A", "B", "C")]
    return out


def recorded(fam: str, arm: str, seed: int) -> bool:
    return os.path.exists(os.path.join(STORE.format(fam=fam.lower()), f"{arm}_s{seed}.json"))


def command(fam: str, arm: str, seed: int, root: str) -> list[str]:
    f = fam.lower()
    return [sys.executable, os.path.join(ROOT, "tools", "bench_feature_suppression.py"), "--family", fam,
            "--out", os.path.join(root, f"v2_{f}_cpu"), "--data-dir", os.path.join(root, f"data_{f}_cpu"),
            "--records", STORE.format(fam=f), "--arms", "baseline", "--runs", f"{arm}:{seed}", "--jobs", "1"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/work/bench_runs", help="run dirs and data (outside the repository)")
    p.add_argument("--list", action="store_true", help="print the queue with what is recorded; run nothing")
    p.add_argument("--families", nargs="+", default=["A", "B", "C"])
    p.add_argument("--controls-last", action="store_true",
                   help="every seed's baseline and recipe run before any random-label control")
    args = p.parse_args(argv)
    todo = [q for q in queue(controls_last=args.controls_last) if q[0] in args.families]
    if args.list:
        for fam, arm, sd in todo:
            print(f"{'recorded' if recorded(fam, arm, sd) else 'to run  '}  {fam} {arm}:{sd}")
        return 0
    for fam, arm, sd in todo:
        if recorded(fam, arm, sd):
            continue
        cmd = command(fam, arm, sd, args.root)
        print(f"[queue] {time.strftime('%H:%M:%S')} start {fam} {arm}:{sd}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"[queue] {time.strftime('%H:%M:%S')} {fam} {arm}:{sd} exit {rc} after {(time.time() - t0) / 60:.1f} min",
              flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
