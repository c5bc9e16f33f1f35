"""The feature-suppression benchmark tool (tools/bench_feature_suppression.py) at its smoke scale:
real pipeline runs of a few training steps on both data families, resumed, and the report's
structure (per-seed values, the transfer lines in the issue's form, stop signals, integration)."""
import importlib.util
import json
import os
import re
import shutil
import sys

import pytest

from conftest import ROOT
import forked_ranks
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import to_dict



def tool_module(name: str):
    """One of the tool's helper modules (scripts in tools/, not a package), registered under its
    name as the scripts import each other (tools/ is on sys.path when they run, and here)."""
    if os.path.join(ROOT, "tools") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "tools"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


arms = tool_module("bench_suppression_arms")  # first: the report imports base_arm from it
records = tool_module("bench_suppression_records")
report = tool_module("bench_suppression_report")
stop = tool_module("bench_suppression_stop")
pairs = tool_module("bench_suppression_pairs")
protocol = tool_module("bench_suppression_protocol")
runner = tool_module("bench_feature_suppression")
arm_overrides, parse_arm = arms.arm_overrides, arms.parse_arm

TRANSFER = r"transfer \(recipe chosen on {}, tested on {}\): pair error ratio per seed( (\d+\.\d\d|inf))+"


def bench(tmp, *args):
    proc = forked_ranks.python(["tools/bench_feature_suppression.py", "--scale", "smoke", "--seeds", "0", *args],
                               cwd=ROOT, timeout=900, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.launch
def test_smoke_both_families_resume_and_report_structure(tmp_path):
    b = ["--family", "B", "--out", str(tmp_path / "b"), "--data-dir", str(tmp_path / "data_b")]
    out = bench(tmp_path, *b, "--arms", "baseline", "mcl2_prev_kauto", "mcl2_prev_kauto_icka_drop")
    assert out.count("[bench] start") == 3
    md = open(tmp_path / "b" / "results.md").read()
    assert "family B (glyphs)" in md and "| arm | letter | ink | position | backdrop | band |" in md
    assert "transfer (recipe chosen on A, tested on B): pair error ratio per seed — not measured" in md
    assert "## Integration weights" in md and "| mcl2_prev_kauto_icka_drop | 0 | 1.00 " in md
    assert "| arm | seeds | pair error ratio per seed | letter pairs per seed | position pairs per seed |" in md
    assert re.search(r"\| baseline \| 0 \| — \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", md)  # the per-seed table
    assert "auto: " in md  # the K that k: auto chose, per seed
    assert re.search(r"\| mcl2_prev_kauto \| 1 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| — \|", md)  # survived; no CKA at stage 1
    assert re.search(r"mcl2_prev_kauto \(K auto\): pair error ratio per seed \S+  \(seeds 0\)", md)
    summary = json.load(open(tmp_path / "b" / "summary.json"))
    assert summary["family"] == "B" and summary["seeds"]["mcl2_prev_kauto_icka_drop"] == [0]
    assert out.count("[bench] start") == 3 and "[bench] start" not in bench(tmp_path, *b, "--arms", "baseline",
                                                                            "mcl2_prev_kauto")  # resumed: all done
    # a later session: the run dirs are gone, their records (tmp/b/records) are enough to skip and report
    for d in os.listdir(tmp_path / "b"):
        if d.endswith(("_s0", "_s0.log")):
            shutil.rmtree(tmp_path / "b" / d) if os.path.isdir(tmp_path / "b" / d) else os.remove(tmp_path / "b" / d)
    again = bench(tmp_path, *b, "--arms", "baseline")  # the report covers every recorded run, asked for or not
    assert "[bench] start" not in again and "3 run records" in again and "1 runs skipped, recorded in" in again
    timeless = lambda text: [ln for ln in text.splitlines() if not ln.startswith("Wall time")]  # noqa: E731
    assert timeless(open(tmp_path / "b" / "results.md").read()) == timeless(md)  # the same report

    a = ["--family", "A", "--out", str(tmp_path / "a"), "--data-dir", str(tmp_path / "data_a"),
         "--other-out", str(tmp_path / "b"), "--recipe-prefix", "mcl2_prev"]  # the smoke's 2-stage arms
    bench(tmp_path, *a, "--arms", "baseline", "mcl2_prev_kauto")
    top = open(tmp_path / "a" / "results.md").read().split("```")[1].strip().splitlines()
    assert re.fullmatch(TRANSFER.format("A", "B"), top[0]) and "recipe mcl2_prev_kauto: chosen on A" in top[1]
    assert re.fullmatch(TRANSFER.format("B", "A"), top[2]) and "recipe mcl2_prev_kauto" in top[3]


@pytest.mark.launch
def test_smoke_simclr_report_names_its_own_suppressed_attributes(tmp_path):
    out = bench(tmp_path, "--objective", "simclr", "--out", str(tmp_path / "s"), "--data-dir", str(tmp_path / "d"),
                "--arms", "simclr_baseline", "simclr_mcl3")
    assert out.count("[bench] start") == 2
    md = open(tmp_path / "s" / "results.md").read()
    # SimCLR's suppressed attributes and metric, not the CLIP family's pairs
    assert re.search(r"suppressed = shape, texture \(.*baseline linear probe shape [0-9.]+, texture [0-9.]+\)", md)
    assert "| simclr_mcl3 | integrated |" in md and "| simclr_baseline | stage_0 |" in md
    assert re.search(r"\| simclr_mcl3 \| 2 \| .* \| — \|\n", md)  # no pairs: "—", never "nan"
    assert "nan" not in md
    assert re.search(r"linear-probe gain \(integrated MCL - baseline\) on suppressed attributes: -?[0-9.]+ points, "
                     r"per seed -?[0-9.]+ \(seeds 0\); easy attribute", md)


def test_family_b_config_has_family_a_settings():
    a, b = (to_dict(load_config(f"configs/{n}.yaml")) for n in ("bench_suppression", "bench_suppression_b"))
    assert a == b  # the transfer test changes the data, nothing else


def summary(ratios_by_arm: dict, suppressed=("shape", "position")) -> dict:
    """A summary whose arms have, per seed, the same pairs on every suppressed attribute."""
    S = {arm: {"integrated": {a: {"pairs": list(v)} for a in suppressed}} for arm, v in ratios_by_arm.items()}
    return {"summary": S, "seeds": {arm: list(range(len(v))) for arm, v in ratios_by_arm.items()}}


def test_simclr_gain_line_gives_every_seed_against_the_same_seeds_baseline():
    def arm(shape, texture, color=(1.0, 1.0)):
        return {"integrated": {"shape": {"probe": list(shape)}, "texture": {"probe": list(texture)},
                               "color": {"probe": list(color)}}}
    res = {"summary": {"simclr_baseline": arm([0.2, 0.3], [0.4, 0.4]), "simclr_mcl3": arm([0.5], [0.6], [0.9]),
                       "simclr_mcl3_noclust": arm([0.1, 0.4], [0.4, 0.5])},
           "seeds": {"simclr_baseline": [0, 1], "simclr_mcl3": [1], "simclr_mcl3_noclust": [0, 1]}}
    lines = report.simclr_final_line(res)
    # seed 1 only: ((0.5 - 0.3) + (0.6 - 0.4)) / 2 = 20 points, not against the baseline's mean
    assert lines[0] == ("linear-probe gain (integrated MCL - baseline) on suppressed attributes: 20.0 points, "
                        "per seed 20.0 (seeds 1); easy attribute: 90.0%")
    assert lines[1].endswith("control - baseline) on suppressed attributes: 2.5 points, per seed -5.0 10.0 (seeds 0 1)")
    del res["summary"]["simclr_mcl3"]
    assert "needs" in report.simclr_final_line(res)[0]


def test_recipe_is_chosen_on_one_family_and_scored_per_seed_on_the_other():
    a = summary({"baseline": [0.2, 0.4], "mcl4_prev": [0.6, 0.7], "mcl4_prev_k64": [0.9, 0.5],
                 "mcl4_noclust": [1.0, 1.0], "mcl4_prev_k16": [1.0], "mcl5_prev": [0.95, 0.95]})
    # never a no-cluster control; k16 lacks seed 1; mcl5_prev is best but outside the recipe grid
    b = summary({"baseline": [0.0, 0.5], "mcl4_prev": [0.5, 0.75], "mcl4_prev_k64": [0.8, 0.5]},
                suppressed=("letter", "position"))
    report.use_family("A")
    assert report.choose_recipe(a, "mcl4_prev")[0] == "mcl4_prev_k64"  # mean of (0.125, 0.833) < mean of (0.5, 0.5)
    assert report.choose_recipe(a)[0] == "mcl5_prev"
    lines = report.transfer_lines({"A": a, "B": b}, "mcl4_prev")
    assert lines[0] == "transfer (recipe chosen on A, tested on B): pair error ratio per seed 0.20 1.00"
    assert lines[2] == "transfer (recipe chosen on B, tested on A): pair error ratio per seed 0.50 0.50"
    assert "recipe mcl4_prev: chosen on B (mean of its per-seed ratios 0.50)" in lines[3]
    report.use_family("A")


def test_dilution_is_per_seed_against_that_seeds_best_stage():
    # means tie (0.8 vs 0.8) but seed 1's integrated model is 0.2 below its own best stage
    pairs = {"stage_0": [0.2, 1.0], "stage_1": [1.0, 0.4], "integrated": [1.0, 0.6]}
    res = {"summary": {"mcl2_prev": {m: {"shape": {"pairs": v}} for m, v in pairs.items()},
                       "mcl2_prev_icka_drop": {m: {"shape": {"pairs": v}} for m, v in pairs.items()}},
           "seeds": {"mcl2_prev": [0, 1], "mcl2_prev_icka_drop": [0, 1]}}
    report.use_family("A")
    rows = [r for r in report.dilution_table(res, ["mcl2_prev"]) if r.startswith("| mcl2_prev")]
    shape = 1 + report.ATTRS.index("shape")
    assert rows[0].split(" | ")[shape] == "0.80 vs 1.00, short 0.40 on seed 1"
    pairs["integrated"][:] = [1.0, 1.0]  # in place: res holds these lists
    assert report.dilution_table(res, ["mcl2_prev"])[-1].split(" | ")[shape] == "1.00 vs 1.00, ≥ on every seed"
    # a re-integrated arm shares its stages: only its integrated row is listed
    every = report.clip_tables({"summary": {a: {m: {"shape": {"pairs": v, "zero_shot": v, "probe": v}}
                                                for m, v in pairs.items()} for a in res["summary"]}},
                               list(res["summary"]))
    assert sum(r.startswith("| mcl2_prev_icka_drop | stage_") for r in every) == 0
    assert sum(r.startswith("| mcl2_prev | stage_") for r in every) == 6  # 2 stages x 3 metrics


def test_arm_names():
    assert parse_arm("mcl4_prev_kauto_icka_drop", 32) == (4, "prev", "auto", "cka_drop")
    assert parse_arm("mcl4_prev_k64", 32) == (4, "prev", 64, "equal")
    ov = arm_overrides("mcl4_prev_kauto_icka_weight", 2000, 8192, 32, 32)
    assert ov[0].count("k: auto") == 3 and "model.integration_weights=cka_weight" in ov
    with pytest.raises(SystemExit, match="unknown arm"):
        parse_arm("mcl4_prev_kmany", 32)


def test_records_hold_everything_the_report_read():
    # the published family-B summary (merged from run dirs) split into records and merged back
    old = json.load(open(os.path.join(ROOT, "docs", "bench", "family_b", "summary.json")))
    recs = records.split_summary(old)
    assert len(recs) == sum(len(v) for v in old["seeds"].values())
    back = json.loads(json.dumps(records.merge(recs)))  # stage numbers as JSON writes them
    for key in ("summary", "purity", "label_stats", "stages", "seeds", "integration"):
        assert back[key] == old[key], key


def test_a_record_of_other_settings_is_refused_by_name(tmp_path):
    settings = {"family": "B", "scale": "cpu", "split": "test", "steps": 2000, "batch": 128, "n_train": 8192,
                "k": 32, "group": 32, "config": "configs/bench_suppression_b.yaml"}
    rec = records.make_record("baseline", 0, settings, {"integrated": {}}, {"weights": None, "cka": None}, {})
    path = records.save(rec, str(tmp_path))
    assert records.load(str(tmp_path), settings)[("baseline", 0)] == rec
    with pytest.raises(SystemExit, match=r"baseline_s0\.json: recorded under other settings \(steps 2000 here, 240 now\)"):
        records.load(str(tmp_path), {**settings, "steps": 240})
    open(path, "w").write("[1, 2]")
    with pytest.raises(SystemExit, match="not a benchmark run record"):
        records.load(str(tmp_path), settings)


def test_a_reintegration_whose_trained_run_is_only_recorded_retrains_it_first(tmp_path):
    order = [("baseline", 0), ("mcl4_prev", 0), ("mcl4_prev_icka_drop", 0)]
    runs = {r: str(tmp_path / f"{r[0]}_s{r[1]}") for r in order}
    recorded = {("baseline", 0): {}, ("mcl4_prev", 0): {}}  # records only: no run dirs
    assert runner.to_run(order, [], runs, recorded) == ([("mcl4_prev", 0), ("mcl4_prev_icka_drop", 0)],
                                                       [("baseline", 0)])  # re-queued: not skipped
    os.makedirs(tmp_path / "mcl4_prev_s0" / "eval")
    open(tmp_path / "mcl4_prev_s0" / "eval" / "results.json", "w").write("{}")  # the trained run dir exists
    assert runner.to_run(order, [], runs, recorded) == ([("mcl4_prev_icka_drop", 0)], [("baseline", 0)])


def test_stop_rules_pick_a_count_from_the_longest_arm_and_are_scored_by_that_fixed_count():
    res = summary({"baseline": [0.0, 0.0], "mcl3_prev": [0.6, 0.8], "mcl4_prev": [0.9, 0.7], "mcl5_prev": [0.7, 0.7]})
    # ratios per seed: 3 stages 0.40 0.20, 4 stages 0.10 0.30 (best, mean 0.20), 5 stages 0.30 0.30
    res["stages"] = {"mcl5_prev": {1: {"cka_prev": [None, None], "survived_samples": [0.9, 0.9], "nmi": [0.1, 0.1]},
                                   2: {"cka_prev": [0.5, 0.6], "survived_samples": [0.8, 0.7], "nmi": [0.2, 0.1]},
                                   3: {"cka_prev": [0.7, 0.95], "survived_samples": [0.6, 0.6], "nmi": [0.3, 0.2]},
                                   4: {"cka_prev": [0.8, 0.8], "survived_samples": [0.3, 0.45], "nmi": [0.2, 0.3]}}}
    report.use_family("A")
    assert stop.picks(res, "cka") == {0: (5, False), 1: (3, True)}
    lines = stop.stage_count_lines(res)
    assert lines[0].endswith("best fixed (after the fact): 4 stages, mean 0.20")
    assert lines[1].endswith("stages per seed 5 3 -> ratio per seed 0.30 0.20, mean 0.25, worse than the best fixed count")
    assert lines[2].endswith("stages per seed 4 4 -> ratio per seed 0.10 0.30, mean 0.20, no worse than the best fixed count")
    assert lines[3].endswith("stages per seed 5 5 (never fired: always mcl5_prev, not a stop signal)")
    res["stages"]["mcl5_prev"][2]["survived_samples"][0] = 0.2  # seed 0 would stop at 2 stages: not run
    assert stop.stage_count_lines(res)[2].endswith("stages per seed 2 4; not scored: run mcl2_prev:0")
    res["summary"]["mcl3_prev"] = summary({"mcl3_prev": [0.6]})["summary"]["mcl3_prev"]  # seed 0 only
    res["seeds"]["mcl3_prev"] = [0]
    head = stop.stage_count_lines(res)[0]  # counts are compared on the longest arm's seeds: 3 is partial
    assert "3 stages on seeds 0 only: 0.40" in head
    assert head.endswith("best fixed (after the fact, among the counts run on every seed): 4 stages, mean 0.20")
    del res["summary"]["mcl3_prev"], res["summary"]["mcl4_prev"]
    assert stop.stage_count_lines(res) == []  # one count is no sweep


def test_stop_rules_are_scored_at_the_recipes_k_on_the_seeds_each_count_ran():
    """At K 64 the 4-stage recipe arm is the longest: survival stops seed 1 before stage 3, which
    the 3-stage K 64 arm (run on seed 1 only) scores; the default K's sweep is absent."""
    res = summary({"baseline": [0.0, 0.0], "mcl4_prev_k64": [0.9, 0.7], "mcl3_prev_k64": [0.8]})
    res["seeds"]["mcl3_prev_k64"] = [1]
    res["stages"] = {"mcl4_prev_k64": {1: {"cka_prev": [None, None], "survived_samples": [1.0, 1.0], "nmi": [0.0, 0.0]},
                                       2: {"cka_prev": [0.6, 0.5], "survived_samples": [0.9, 0.9], "nmi": [0.5, 0.4]},
                                       3: {"cka_prev": [0.6, 0.6], "survived_samples": [0.6, 0.4], "nmi": [0.5, 0.5]}}}
    report.use_family("A")
    lines = stop.stage_count_lines(res)
    assert lines[0] == ("stage counts at K 64, pair error ratio per seed (seeds 0 1): 4 stages 0.10 0.30; 3 stages "
                        "on seeds 1 only: 0.20; best fixed (after the fact, among the counts run on every seed): "
                        "4 stages, mean 0.20")
    assert lines[2] == ("  stop rule survival (K 64, survived_samples < 0.5): stages per seed 4 3 -> ratio per seed "
                        "0.10 0.20, mean 0.15, no worse than the best fixed count")
    res["stages"]["mcl4_prev_k64"][3]["survived_samples"][0] = 0.1  # seed 0 would stop at 3 stages too: not run
    assert stop.stage_count_lines(res)[2].endswith("stages per seed 3 3; not scored: run mcl3_prev_k64:0")



def test_random_labels_keep_every_group_size_and_lose_the_grouping():
    import numpy as np

    from mcl_dist.steps.labels_step import shuffled

    labels = np.repeat(np.arange(20), np.arange(1, 21))  # groups of 1..20 samples
    labels[[3, 50]] = -1  # unlabelled samples stay unlabelled
    out = shuffled(labels, seed=0, stage=2)
    assert (out[[3, 50]] == -1).all() and sorted(np.bincount(out[out >= 0])) == sorted(np.bincount(labels[labels >= 0]))
    assert (out != labels).mean() > 0.5 and (shuffled(labels, 0, 2) == out).all() and (shuffled(labels, 1, 2) != out).any()
    assert "cluster.shuffle_labels=true" in arm_overrides("mcl4_randlab_k64", 2000, 8192, 32, 32)
    assert parse_arm("mcl4_randlab_k64", 32) == (4, "randlab", 64, "equal")


def test_pair_ratio_interval_is_a_paired_bootstrap_over_pairs():
    import numpy as np

    base = [np.array([1] * 50 + [0] * 150, np.uint8), np.array([1] * 100 + [0] * 100, np.uint8)]  # errors 0.75, 0.5
    mcl = [np.array([1] * 150 + [0] * 50, np.uint8), np.array([1] * 150 + [0] * 50, np.uint8)]  # errors 0.25, 0.25
    r, lo, hi = pairs.pair_ratio(mcl, base)
    assert abs(r - 0.25 / 0.625) < 1e-9 and lo < r < hi and hi - lo < 0.25
    assert pairs.pair_ratio(base, base)[1:] == (1.0, 1.0)  # the same pairs: no interval
    d, lo, hi = pairs.accuracy_diff(mcl, base)
    assert abs(d - 0.375) < 1e-9 and lo < d < hi


def test_hard_negatives_share_the_most_words_and_retrieval_counts_the_own_caption():
    import numpy as np

    caps = ["a red circle on black", "a red circle on gray", "a blue square on white", "a red square on black"]
    sets = pairs.hard_negative_sets(caps, k=2)
    assert sets[0].tolist() == [0, 1, 3] and sets[2][0] == 2
    img = np.eye(4)
    assert pairs.retrieval(img, np.eye(4), sets) == 1.0
    assert pairs.retrieval(img, np.eye(4)[[1, 0, 2, 3]], sets) == 0.5  # captions 0 and 1 swapped


def fake_record(arm, seed, fam, sup_ok, easy_ok=1.0, n=200):
    """A record whose every model gets `sup_ok` of the suppressed pairs and `easy_ok` of the easy ones."""
    fa = report.FAMILY_ATTRS[fam]
    per = lambda share: "1" * int(share * n) + "0" * (n - int(share * n))  # noqa: E731
    models = {f"integ:{r}": {**{a: per(sup_ok.get(r, sup_ok["equal"])) for a in fa["suppressed"]},
                             **{a: per(easy_ok) for a in fa["easy"]}} for r in pairs.RULES}
    return {"arm": arm, "seed": seed, "pairs": {split: dict(models) for split in ("val", "test")}}


def test_the_recipe_is_chosen_on_the_other_families_validation_pairs():
    recs = {"A": {("baseline", 0): fake_record("baseline", 0, "A", {"equal": 0.5}),
                  ("mcl4_prev_k64", 0): fake_record("mcl4_prev_k64", 0, "A", {"equal": 0.8, "whiten": 0.9})},
            "B": {("baseline", 0): fake_record("baseline", 0, "B", {"equal": 0.5}),
                  ("mcl4_prev_k64", 0): fake_record("mcl4_prev_k64", 0, "B", {"equal": 0.9, "whiten": 0.7},
                                                    easy_ok=1.0)}}
    table = protocol.candidates_table(recs)
    assert protocol.choose(table, ("B",))[0] == ("mcl4_prev_k64", "equal")  # B's validation picks equal
    assert protocol.choose(table, ("A",))[0] == ("mcl4_prev_k64", "whiten")
    md = "\n".join(protocol.report_lines(recs))
    assert "Family A: recipe `mcl4_prev_k64` integrated by `equal`, chosen on the validation pairs of B" in md
    assert "| 0 | 0.40 [" in md  # A's test: error 0.2 over the baseline's 0.5
    assert "family C: no recipe chosen yet" not in md and "Family C: recipe `mcl4_prev_k64` integrated by" in md
    recs["A"][("mcl4_prev_k64", 0)] = fake_record("mcl4_prev_k64", 0, "A", {"equal": 0.8, "whiten": 0.9}, easy_ok=0.9)
    assert protocol.choose(protocol.candidates_table(recs), ("A",))[0] is None  # loses the easy attributes
    assert protocol.missing_runs(recs)["A"][:2] == ["mcl4_randlab_k64:0", "mcl4_noclust:0"]
