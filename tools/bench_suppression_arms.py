"""The feature-suppression benchmark's data families, scales and arms
(tools/bench_feature_suppression.py runs them; bench_suppression_report.py formats the results).

An arm name says what differs from the single-stage baseline:

    baseline | reference                         1 stage of T steps (reference: on the no-easy data)
    mcl<N>_<prev|base|noclust|randlab>[_k<K|auto>][_i<W>]
        N stages of T/N steps, init previous / base, or previous without clusters (noclust: one
        label, only the restarts remain), or previous with each stage's pseudo-labels permuted over
        the samples (randlab, cluster.shuffle_labels: the clustered arm's group sizes, so as many
        negatives per anchor, without the clusters); K clusters per stage (default --k; auto: cluster.k_rule);
        W = cka_drop | cka_weight: the same trained stages integrated with model.integration_weights=W
        (no training: a copy of the arm without _i<W>, whose integrate, eval and report are redone)
"""
from __future__ import annotations

import os
import re

# A: shapes (mcl_dist.synthetic.trifeature); B: glyphs (mcl_dist.synthetic.glyphs); C: dials
# (mcl_dist.synthetic.dials), defined before any run on it and used for the final report only. The
# v2 protocol (bench_suppression_protocol.py) chooses on the validation pair sets of the other
# families and reports the test pair sets; its runs and records have their own names, so the
# earlier (test-chosen) records in docs/bench/records/bench_suppression*_test are never mixed in.
FAMILIES = {
    "A": dict(name="shapes", config="configs/bench_suppression.yaml", data="data/bench_suppression_{scale}",
              out="runs/bench_v2_a_{scale}"),
    "B": dict(name="glyphs", config="configs/bench_suppression_b.yaml", data="data/bench_suppression_b_{scale}",
              out="runs/bench_v2_b_{scale}"),
    # family A's config: it names only the tower and training settings, none of them chosen on C
    "C": dict(name="dials", config="configs/bench_suppression.yaml", data="data/bench_suppression_c_{scale}",
              out="runs/bench_v2_c_{scale}"),
}
# most decisive first (a benchmark cut short still has the transfer comparison): baseline and the
# recipe chosen on A (4 stages, K 32), its no-cluster control, auto-K, then the K sweep; the
# integration arms only re-integrate a finished mcl4_prev run
ARMS = ["baseline", "mcl4_prev", "mcl4_prev_icka_drop", "mcl4_prev_icka_weight", "mcl4_noclust", "mcl4_prev_kauto",
        "reference", "mcl4_prev_k16", "mcl4_prev_k64"]
ARMS_A_EARLIER = ["mcl3_prev", "mcl5_prev", "mcl2_prev", "mcl3_base", "mcl3_noclust"]  # the stage-count sweep's, kept in A's report
HEADLINE = "mcl4_prev"  # chosen before the test run (on a separate data set made for choosing: 4 stages won)
# the transfer lines choose the recipe among these arms only: 4 stages (no stop rule passed) with
# K 16 / 32 / 64 / auto and each integration choice; the sweep's other stage counts are not candidates
RECIPE_PREFIX = "mcl4_prev"
SIMCLR_ARMS = ["simclr_reference", "simclr_baseline", "simclr_mcl2", "simclr_mcl3", "simclr_mcl3_noclust",
               "simclr_mcl3_randlab"]
SIMCLR_AS = {"simclr_reference": "reference", "simclr_baseline": "baseline", "simclr_mcl2": "mcl2_prev",
             "simclr_mcl3": "mcl3_prev", "simclr_mcl3_noclust": "mcl3_noclust", "simclr_mcl3_randlab": "mcl3_randlab"}  # same stage lists as these CLIP arms
ARM_RE = re.compile(r"^mcl(\d)_(prev|base|noclust|randlab)(?:_k(\d+|auto))?(?:_i(cka_drop|cka_weight))?$")

SCALES = {  # data size, total steps T, batch, K / group size per stage, concurrent runs, threads each
    "cpu": dict(n_train=8192, n_eval=1024, mmvp_pairs=100, pair_sets=2, steps=2000, batch=128, k=32, group=32, jobs=2,
                threads=1, workers=0, probe=4096, simclr_steps=2000, device_note="2 CPU cores"),
    "gpu": dict(n_train=65536, n_eval=2048, mmvp_pairs=100, pair_sets=2, steps=3000, batch=128, k=32, group=32, jobs=1,
                threads=8, workers=0, probe=8000, simclr_steps=3000, device_note="1 GPU"),
    # the tool's own test (tests/test_bench_suppression.py): a few seconds of training per arm
    "smoke": dict(n_train=256, n_eval=64, mmvp_pairs=3, pair_sets=2, steps=6, batch=32, k=4, group=4, jobs=1,
                  threads=1, workers=0, probe=64, simclr_steps=6, device_note="smoke test"),
}


def default_arms(family: str) -> list[str]:
    return ARMS + (ARMS_A_EARLIER if family == "A" else [])


def parse_arm(arm: str, k_default: int) -> tuple[int, str, int | str, str]:
    """(stages, init or 'noclust', K or 'auto', integration weights) of a CLIP arm name."""
    arm = SIMCLR_AS.get(arm, arm)
    if arm in ("reference", "baseline"):
        return 1, "", k_default, "equal"
    m = ARM_RE.match(arm)
    if not m:
        raise SystemExit(f"unknown arm {arm!r}: use reference, baseline or mclN_(prev|base|noclust|randlab)[_kK|_kauto]"
                         f"[_icka_drop|_icka_weight]")
    k = m.group(3) or k_default
    return int(m.group(1)), m.group(2), (k if k in ("auto", k_default) else int(k)), m.group(4) or "equal"


def base_arm(arm: str) -> str:
    """The trained arm an integration arm re-integrates ('' for an arm that trains)."""
    return arm.split("_i", 1)[0] if "_icka" in arm else ""


def split_steps(total: int, n: int) -> list[int]:
    base = [total // n] * n
    base[0] += total - sum(base)
    return base


def arm_overrides(arm: str, steps_total: int, n_train: int, k: int, group: int) -> list[str]:
    n, init, k, weights = parse_arm(arm, k)
    steps = split_steps(steps_total, n)
    if n == 1:
        return [f"stages=[{{max_steps: {steps[0]}}}]"]
    init_as = {"prev": "previous", "noclust": "previous", "randlab": "previous", "base": "base"}[init]
    stages = [f"{{max_steps: {steps[0]}}}"] + [f"{{max_steps: {s}, k: {k}, group_size: {group}, init: {init_as}}}"
                                               for s in steps[1:]]
    out = ["stages=[" + ", ".join(stages) + "]"]
    if init == "noclust":
        out.append(f"cluster.min_label_size={10 * n_train + 1}")  # every cluster too small: one label
    if init == "randlab":
        out.append("cluster.shuffle_labels=true")
    if weights != "equal":
        out.append(f"model.integration_weights={weights}")
    return out


def planned_runs(arms: list[str], seeds: list[int], ref_seeds: list[int]) -> list[tuple[str, int]]:
    """(arm, seed) in run order: seed-major (every arm's first seed before any arm's second), arms
    in the given order; the reference runs its own seeds."""
    per_arm = {arm: ref_seeds if SIMCLR_AS.get(arm, arm) == "reference" else seeds for arm in arms}
    rounds = max(len(v) for v in per_arm.values())
    return [(arm, per_arm[arm][i]) for i in range(rounds) for arm in arms if i < len(per_arm[arm])]


# the pair sets of each split: independently generated (their own seeds), never shared by two splits;
# the validation split chooses every setting, the test split only reports (docs/results.md)
PAIR_SEEDS = {"val": (101, 102), "test": (201, 202)}


def family_specs(family: str, simclr: bool = False) -> tuple:
    """((name, spec), ...): main/ and the reference's data (no_easy_pos/: the easy attributes held
    constant, position varied; SimCLR: no_easy/, position constant too)."""
    from mcl_dist.synthetic.glyphs import GlyphSpec
    from mcl_dist.synthetic.trifeature import SyntheticSpec

    if family == "B":  # GlyphSpec's easy attributes exclude position already
        return ("main", GlyphSpec()), ("no_easy_pos", GlyphSpec(no_easy=True))
    if family == "C":
        from mcl_dist.synthetic.dials import DialSpec
        return ("main", DialSpec()), ("no_easy_pos", DialSpec(no_easy=True))
    from bench_suppression_families import FAMILY_ATTRS
    fa = FAMILY_ATTRS["A"]
    return (("main", SyntheticSpec()), ("no_easy", SyntheticSpec(no_easy=True)) if simclr else
            ("no_easy_pos", SyntheticSpec(easy=tuple(fa["easy"]), hard=tuple(fa["hard"]), no_easy=True)))


def make_data(root: str, sc: dict, family: str, simclr: bool = False) -> dict:
    """Per data set (family_specs): train, test and val shards, the MMVP folders (mmvp_test /
    mmvp_val: the pipeline's; pairs_val / pairs_test: sc["pair_sets"] sets of sc["mmvp_pairs"] pairs
    per attribute each, seeds PAIR_SEEDS), zero-shot classes."""
    from mcl_dist.synthetic.trifeature import shard_pattern, write_mmvp_pairs, write_synthetic_shards, write_zero_shot_sets

    out = {}
    for name, spec in family_specs(family, simclr):
        d, per = os.path.join(root, name), 1024
        shards = {split: write_synthetic_shards(d, n_samples=n, samples_per_shard=per, seed=seed, spec=spec,
                                                prefix=split, progress=False)
                  for split, n, seed in (("train", sc["n_train"], 0), ("test", sc["n_eval"], 0), ("val", sc["n_eval"], 1))}
        out[name] = {split: shard_pattern(p) for split, p in shards.items()}
        out[name]["zero_shot"] = write_zero_shot_sets(os.path.join(d, "zero_shot.json"), spec)
        for split, seeds in PAIR_SEEDS.items():
            out[name][f"pairs_{split}"] = [write_mmvp_pairs(os.path.join(d, f"pairs_{split}{j}"), spec=spec,
                                                            n_pairs_per_attribute=sc["mmvp_pairs"], seed=seed)
                                           for j, seed in enumerate(seeds[:sc["pair_sets"]])]
            out[name][f"mmvp_{split}"] = out[name][f"pairs_{split}"][0]
    return out


def data_digest(data: dict) -> str:
    """One sha256 over every shard and pair folder of the main data set (what a record ran on)."""
    import braceexpand
    from bench_suppression_pairs import digest_paths

    d = data["main"]
    paths = [p for split in ("train", "val", "test") for p in braceexpand.braceexpand(d[split])]
    return digest_paths(paths + d["pairs_val"] + d["pairs_test"] + [d["zero_shot"]])
