"""Would a label-free signal have picked the number of MCL stages? (scored against the stage-count sweep)

Each rule reads the signals the labels step logs before stage s trains (mcl_dist/clustering/stop_signal.py) on
the longest arm of a stage sweep and stops before the first stage where it fires; the count it
picks, N, is then scored by the fixed-count arm mclN_prev<K> of the same seed (same T, same K), next
to the best fixed count (the lowest mean of its per-seed ratios, chosen after the fact: an oracle).
A sweep is the arms mclN_prev<K> of one K: `mcl5_prev` is the longest at the default K; at K 64 and
auto the longest is the 4-stage recipe arm (the rules can only stop earlier there). The rules and
thresholds were fixed before the stage sweep ran (2026-12-02):

    cka       stage s-1's linear CKA with the earlier stages >= 0.9: it learned nothing new (the
              threshold integration_weights: cka_drop uses)
    survival  fewer than half the samples keep a usable label (survived_samples < 0.5): stage s
              would mostly repeat stage s-1's negatives
    nmi       the new clusters re-draw the current labels (NMI >= 0.9)

A rule that never fires picks the longest count on every seed: that is "always train the most
stages", not a stop signal, and the line says so.

Measured (3 seeds per family, docs/results.md): none of the three is no worse than the best fixed
count on both families, so the pipeline has no `stages: auto`.
"""
from __future__ import annotations

import operator

from bench_suppression_report import mean, seed_ratios

RULES = {"cka": ("cka_prev", operator.ge, 0.9), "survival": ("survived_samples", operator.lt, 0.5),
         "nmi": ("nmi", operator.ge, 0.9)}
SIGN = {operator.ge: ">=", operator.lt: "<"}
LONGEST = "mcl5_prev"
COUNTS = (2, 3, 4, 5)
SWEEPS = ("", "_k64", "_kauto")  # the default K's sweep first; then the recipes' K (the transfer lines')


def picks(res: dict, rule: str, longest: str = LONGEST) -> dict:
    """{seed: (stage count the rule picks, fired)} from `longest`'s per-stage signals."""
    key, op, threshold = RULES[rule]
    stages, seeds = res["stages"][longest], res["seeds"][longest]
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


def _longest(res: dict, suffix: str) -> str:
    """The sweep's longest arm with logged signals ('' when none): mcl5_prev at the default K."""
    ran = [n for n in COUNTS if f"mcl{n}_prev{suffix}" in res.get("stages", {})]
    longest = f"mcl{max(ran)}_prev{suffix}" if ran else ""
    return longest if suffix or longest == LONGEST else ""


def _fmt(ratios: dict) -> str:
    return " ".join(f"{v:.2f}" for v in ratios.values())


def stage_count_lines(res: dict) -> list[str]:
    """Per sweep: the fixed counts' per-seed ratios, the best of them, and per rule the counts it
    picks and what they scored; nothing for a sweep with fewer than two counts run."""
    lines = []
    for suffix in SWEEPS:
        lines += _sweep_lines(res, suffix)
    return lines


def _sweep_lines(res: dict, suffix: str) -> list[str]:
    longest = _longest(res, suffix)
    if not longest:
        return []
    seeds = res["seeds"][longest]  # every count is compared on these seeds only
    ran = {n: r for n in COUNTS if (r := seed_ratios(res, f"mcl{n}_prev{suffix}"))}
    fixed = {n: {sd: r[sd] for sd in seeds} for n, r in ran.items() if set(seeds) <= set(r)}
    partial = {n: p for n, r in ran.items() if n not in fixed and (p := {sd: r[sd] for sd in seeds if sd in r})}
    if len(fixed) + len(partial) < 2:
        return []
    best = min(fixed, key=lambda n: mean(list(fixed[n].values())))
    best_mean = mean(list(fixed[best].values()))
    k = f"K {suffix[len('_k'):]}" if suffix else ""  # the default K's lines name no K, as before
    head = (f"stage counts{f' at {k}' if k else ''}, pair error ratio per seed (seeds "
            f"{' '.join(map(str, seeds))}): " + "; ".join(f"{n} stages {_fmt(r)}" for n, r in fixed.items()))
    head += "".join(f"; {n} stages on seeds {' '.join(map(str, r))} only: {_fmt(r)}" for n, r in partial.items())
    lines = [head + f"; best fixed (after the fact{', among the counts run on every seed' if partial else ''}): "
             f"{best} stages, mean {best_mean:.2f}"]
    for rule, (key, op, threshold) in RULES.items():
        got = picks(res, rule, longest)
        scored = {seed: ran.get(n, {}).get(seed) for seed, (n, _) in got.items()}
        line = (f"  stop rule {rule} ({f'{k}, ' if k else ''}{key} {SIGN[op]} {threshold}): stages per seed "
                + " ".join(str(n) for n, _ in got.values()))
        if not any(fired for _, fired in got.values()):
            lines.append(line + f" (never fired: always {longest}, not a stop signal)")
        elif None in scored.values():
            missing = sorted({f"mcl{n}_prev{suffix}:{seed}" for seed, (n, _) in got.items() if scored[seed] is None})
            lines.append(line + f"; not scored: run {' '.join(missing)}")
        else:
            m = mean(list(scored.values()))
            verdict = "no worse than" if m <= best_mean + 1e-9 else "worse than"
            lines.append(line + f" -> ratio per seed {_fmt(scored)}, mean {m:.2f}, {verdict} the best fixed count")
    return lines
