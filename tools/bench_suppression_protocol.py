"""The v2 protocol of the feature-suppression benchmark: every choice on validation pairs, the test
pairs only for the report, each ratio with its 95% interval (bench_suppression_pairs.py).

A candidate recipe is a trained arm (4 stages, a K) and a label-free integration rule
(bench_suppression_pairs.RULES, `last` excepted: it is the bar the integration must reach). For
the report on family F the recipe is the one with the lowest mean validation pair error ratio over
the seeds of the *other* development families (A and B; C chooses nothing), among the candidates
that keep the easy attributes (validation easy pair accuracy at most EASY_SLACK below the
baseline's, on average). Family F's test pairs then give, per seed: the recipe's ratio against the
same seed's baseline, the last stage's, the integrated-minus-last difference on the suppressed
attributes, and the random-label and no-cluster controls integrated by the same rule.

    python tools/bench_suppression_protocol.py     # the tables from the committed records
"""
from __future__ import annotations

import os
import sys

import numpy as np

from bench_suppression_families import FAMILY_ATTRS

PROTOCOL = "v2"
DEVELOPMENT = ("A", "B")  # the families that choose; C only reports
CANDIDATE_ARMS = ("mcl4_prev_k64", "mcl4_prev", "mcl4_prev_kauto")
CANDIDATE_RULES = ("equal", "first_last", "whiten", "retr_subset", "retr_whiten")
CONTROLS = {"mcl4_prev_k64": ("mcl4_randlab_k64", "mcl4_noclust"), "mcl4_prev": ("mcl4_randlab", "mcl4_noclust"),
            "mcl4_prev_kauto": ("mcl4_randlab_kauto", "mcl4_noclust")}
EASY_SLACK = 0.02
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORE = os.path.join(ROOT, "docs", "bench", "records", "bench_v2_{fam}_cpu")


def attrs_of(family: str) -> dict:
    return FAMILY_ATTRS[family]


def load_family(family: str, store: str | None = None) -> dict:
    """{(arm, seed): record} of one family's v2 records (those scored per pair)."""
    import bench_suppression_records as records

    path = store or STORE.format(fam=family.lower())
    return {k: r for k, r in records.load(path).items() if "pairs" in r} if os.path.isdir(path) else {}


def model_of(rule: str) -> str:
    return f"integ:{rule}"


def seed_ratio(recs: dict, arm: str, rule: str, seed: int, split: str, family: str, model: str | None = None) -> tuple | None:
    """(ratio, lo, hi) of arm's model (default: integrated by `rule`) vs the same seed's baseline."""
    from bench_suppression_pairs import outcomes, pair_ratio

    if (arm, seed) not in recs or ("baseline", seed) not in recs:
        return None
    sup = attrs_of(family)["suppressed"]
    return pair_ratio(outcomes(recs[(arm, seed)], split, model or model_of(rule), sup),
                      outcomes(recs[("baseline", seed)], split, "integ:equal", sup), seed=seed)


def easy_drop(recs: dict, arm: str, rule: str, seed: int, split: str, family: str) -> float:
    """Baseline easy pair accuracy minus the recipe's (mean over the easy attributes)."""
    from bench_suppression_pairs import outcomes

    easy = attrs_of(family)["easy"]
    m = outcomes(recs[(arm, seed)], split, model_of(rule), easy)
    b = outcomes(recs[("baseline", seed)], split, "integ:equal", easy)
    return float(np.mean([y.mean() - x.mean() for x, y in zip(m, b)]))


def candidates_table(all_recs: dict, split: str = "val") -> dict:
    """{(arm, rule): {family: {seed: (ratio, lo, hi, easy_drop)}}} over the development families."""
    out = {}
    for fam in DEVELOPMENT:
        recs = all_recs.get(fam, {})
        for arm in CANDIDATE_ARMS:
            for rule in CANDIDATE_RULES:
                for (a, seed) in sorted(recs):
                    if a != arm:
                        continue
                    r = seed_ratio(recs, arm, rule, seed, split, fam)
                    if r is not None:
                        out.setdefault((arm, rule), {}).setdefault(fam, {})[seed] = (*r, easy_drop(recs, arm, rule, seed, split, fam))
    return out


def choose(table: dict, families: tuple) -> tuple[tuple, float] | tuple[None, float]:
    """The candidate with the lowest mean validation ratio over `families`' seeds (each family
    needs at least one seed), among those within EASY_SLACK of the baseline on the easy attributes."""
    best = (None, float("inf"))
    for cand, per in table.items():
        if not families or any(f not in per for f in families):
            continue
        vals = [v for f in families for v in per[f].values()]
        if np.mean([v[3] for v in vals]) > EASY_SLACK:
            continue
        score = float(np.mean([v[0] for v in vals]))
        if score < best[1]:
            best = (cand, score)
    return best


def fmt(r: tuple | None) -> str:
    return "—" if r is None else f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]"


def report_lines(all_recs: dict) -> list[str]:
    """The tables docs/results.md opens with (markdown)."""
    from bench_suppression_pairs import accuracy_diff, outcomes

    table = candidates_table(all_recs)
    lines = ["### Validation: every candidate recipe (4-stage arm x integration rule), pair error ratio per seed [95% interval]", "",
             "| arm | rule | " + " | ".join(f"family {f}" for f in DEVELOPMENT) + " | easy drop (mean) |",
             "|---|---|" + "---|" * len(DEVELOPMENT) + "---|"]
    for (arm, rule), per in sorted(table.items()):
        cells = [" ".join(f"s{sd} {fmt(v)}" for sd, v in sorted(per.get(f, {}).items())) or "—" for f in DEVELOPMENT]
        drops = [v[3] for f in per for v in per[f].values()]
        lines.append(f"| {arm} | {rule} | " + " | ".join(cells) + f" | {np.mean(drops):.3f} |")
    lines += ["", "### Test: the recipe chosen on the other families' validation pairs, per seed", ""]
    for fam in ("A", "B", "C"):
        recs = all_recs.get(fam, {})
        others = tuple(f for f in DEVELOPMENT if f != fam)
        cand, score = choose(table, others)
        if cand is None:
            lines.append(f"- family {fam}: no recipe chosen yet (the validation runs of {'/'.join(others)} are missing)")
            continue
        arm, rule = cand
        sup = attrs_of(fam)["suppressed"]
        lines += [f"Family {fam}: recipe `{arm}` integrated by `{rule}`, chosen on the validation pairs of "
                  f"{'/'.join(others)} (mean ratio {score:.2f}); test pairs, {', '.join(sup)}:", "",
                  "| seed | recipe | last stage alone | integrated - last (pair acc.) | random-label control | no-cluster control | easy drop |",
                  "|---|---|---|---|---|---|---|"]
        seeds = sorted(sd for a, sd in recs if a == "baseline")
        for sd in seeds:
            r = seed_ratio(recs, arm, rule, sd, "test", fam)
            last = seed_ratio(recs, arm, rule, sd, "test", fam, model="integ:last")
            diff = ("—" if (arm, sd) not in recs else
                    "{:+.3f} [{:+.3f}, {:+.3f}]".format(*accuracy_diff(outcomes(recs[(arm, sd)], "test", model_of(rule), sup),
                                                                        outcomes(recs[(arm, sd)], "test", "integ:last", sup), seed=sd)))
            ctrl = [fmt(seed_ratio(recs, c, rule, sd, "test", fam)) for c in CONTROLS[arm]]
            drop = "—" if r is None else f"{easy_drop(recs, arm, rule, sd, 'test', fam):+.3f}"
            lines.append(f"| {sd} | {fmt(r)} | {fmt(last)} | {diff} | {ctrl[0]} | {ctrl[1]} | {drop} |")
        lines.append("")
    return lines


def missing_runs(all_recs: dict, seeds=(0, 1, 2), arm: str = "mcl4_prev_k64") -> dict:
    """{family: [arm:seed, ...]} of the protocol's runs without a record, in the order to run them."""
    out = {}
    for fam in ("A", "B", "C"):
        recs = all_recs.get(fam, {})
        want = [(a, sd) for sd in seeds for a in ("baseline", arm, CONTROLS[arm][0], CONTROLS[arm][1])]
        miss = [f"{a}:{sd}" for a, sd in want if (a, sd) not in recs]
        if miss:
            out[fam] = miss
    return out


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    recs = {fam: load_family(fam) for fam in ("A", "B", "C")}
    print("\n".join(report_lines(recs)))
    for fam, miss in missing_runs(recs).items():
        print(f"not run yet, family {fam}: {' '.join(miss)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
