"""Would a label-free signal have picked the number of MCL stages? (issue 25, item 3)

Each rule reads the signals the labels step logs before stage s trains (mcl_dist/stop_signal.py) on
the longest arm of the stage sweep, LONGEST, and stops before the first stage where it fires; the
count it picks, N, is then scored by the fixed-count arm mclN_prev of the same seed (same T, same
K), next to the best fixed count (the lowest mean of its per-seed ratios, chosen after the fact:
an oracle). The rules and thresholds were fixed before the stage sweep ran (2026-12-02):

    cka       stage s-1's linear CKA with the earlier stages >= 0.9: it learned nothing new (the
              threshold integration_weights: cka_drop uses)
    survival  fewer than half the samples keep a usable label (survived_samples < 0.5): stage s
              would mostly repeat stage s-1's negatives
    nmi       the new clusters re-draw the current labels (NMI >= 0.9)

A rule that never fires picks LONGEST's count on every seed: that is "always train the most
stages", not a stop signal, and the line says so.
"""
from __future__ import annotations

import operator

from bench_suppression_report import mean, seed_ratios

RULES = {"cka": ("cka_prev", operator.ge, 0.9), "survival": ("survived_samples", operator.lt, 0.5),
         "nmi": ("nmi", operator.ge, 0.9)}
SIGN = {operator.ge: ">=", operator.lt: "<"}
LONGEST = "mcl5_prev"
COUNTS = (2, 3, 4, 5)


def picks(res: dict, rule: str) -> dict:
    """{seed: (stage count the rule picks, fired)} from LONGEST's per-stage signals."""
    key, op, threshold = RULES[rule]
    stages, seeds = res["stages"][LONGEST], res["seeds"][LONGEST]
    n_max = 1 + max(int(s) for s in stages)
    out = {}
    for i, seed in enumerate(seeds):
        out[seed] = (n_max, False)
        for s in sorted(stages, key=int):
            v = stages[s].get(key, [None] * len(seeds))[i]
            if v is not None and op(v, threshold):
                out[seed] = (int(s), True)
                break
    return out


def stage_count_lines(res: dict) -> list[str]:
    """The fixed counts' per-seed ratios, the best of them, and per rule the counts it picks and
    what they scored; empty until the sweep (LONGEST and another count) has run."""
    if LONGEST not in res.get("stages", {}):
        return []
    seeds = res["seeds"][LONGEST]  # every count is compared on these seeds only
    fixed = {n: {sd: r[sd] for sd in seeds} for n in COUNTS
             if set(seeds) <= set(r := seed_ratios(res, f"mcl{n}_prev"))}
    if len(fixed) < 2:
        return []
    best = min(fixed, key=lambda n: mean(list(fixed[n].values())))
    best_mean = mean(list(fixed[best].values()))
    lines = [f"stage counts, pair error ratio per seed (seeds {' '.join(map(str, seeds))}): " + "; ".join(
        f"{n} stages {' '.join(f'{v:.2f}' for v in r.values())}" for n, r in fixed.items())
        + f"; best fixed (after the fact): {best} stages, mean {best_mean:.2f}"]
    for rule, (key, op, threshold) in RULES.items():
        got = picks(res, rule)
        scored = {seed: fixed.get(n, {}).get(seed) for seed, (n, _) in got.items()}
        head = (f"  stop rule {rule} ({key} {SIGN[op]} {threshold}): stages per seed "
                + " ".join(str(n) for n, _ in got.values()))
        if not any(fired for _, fired in got.values()):
            lines.append(head + f" (never fired: always {LONGEST}, not a stop signal)")
        elif None in scored.values():
            missing = sorted({f"mcl{n}_prev" for seed, (n, _) in got.items() if scored[seed] is None})
            lines.append(head + f"; not scored: run {' '.join(missing)}")
        else:
            m = mean(list(scored.values()))
            verdict = "no worse than" if m <= best_mean + 1e-9 else "worse than"
            lines.append(head + f" -> ratio per seed {' '.join(f'{v:.2f}' for v in scored.values())}, mean {m:.2f}, "
                         f"{verdict} the best fixed count")
    return lines
