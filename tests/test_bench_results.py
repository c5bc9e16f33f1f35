"""The v2 results section (tools/bench_suppression_results.py): chosen on the other families'
validation pairs, reported on test pairs, read from any records directory, regenerated in place."""
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))

import bench_suppression_results as results  # noqa: E402
from bench_suppression_pairs import RULES  # noqa: E402

N = 200


def per(share: float) -> str:
    return "1" * int(share * N) + "0" * (N - int(share * N))


def record(fam: str, arm: str, seed: int, val: dict, test: dict | None = None, easy: float = 1.0) -> dict:
    """Every model gets `val[model]` (default: val["equal"]) of the suppressed pairs on the
    validation split, `test[...]` on the test split, and `easy` of the easy pairs."""
    fa = results.protocol.attrs_of(fam)
    test = test or val

    def models(share: dict) -> dict:
        out = {f"integ:{r}": {**{a: per(share.get(r, share["equal"])) for a in fa["suppressed"]},
                              **{a: per(easy) for a in fa["easy"]}} for r in RULES}
        return {**out, "_sets": 2}

    return {"arm": arm, "seed": seed, "settings": {}, "models": {},
            "pairs": {"val": models(val), "test": models(test)},
            "provenance": {"commit": "abc1234def", "dirty": False, "data_digest": f"{fam}digest0000",
                           "versions": {"torch": "2.x"}, "settings_as_run": {"k_used": [None, 64]}}}


def write(root, fam, rec):
    d = results.store(str(root), fam)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{rec['arm']}_s{rec['seed']}.json"), "w") as f:
        json.dump(rec, f)


def fill(root):
    """A and B seed 0: on A's validation pairs first_last wins, on B's equal; on the test pairs the
    other way round, so a choice made on test would differ. C: only the baseline of seed 0."""
    for fam in ("A", "B"):
        write(root, fam, record(fam, "baseline", 0, {"equal": 0.5}))
        write(root, fam, record(fam, "mcl4_randlab_k64", 0, {"equal": 0.4}))
    write(root, "A", record("A", "mcl4_prev_k64", 0, {"equal": 0.8, "first_last": 0.9, "last": 0.9},
                            {"equal": 0.9, "first_last": 0.8, "last": 0.85}))
    write(root, "B", record("B", "mcl4_prev_k64", 0, {"equal": 0.9, "first_last": 0.8, "last": 0.85},
                            {"equal": 0.8, "first_last": 0.9, "last": 0.9}))
    write(root, "C", record("C", "baseline", 0, {"equal": 0.5}))


def test_each_family_reports_the_rule_the_other_families_validation_pairs_chose(tmp_path):
    fill(tmp_path)
    recs = results.load_all(str(tmp_path))
    chosen = results.choices(recs)
    assert (chosen["A"]["arm"], chosen["A"]["rule"], chosen["A"]["chosen_on"]) == ("mcl4_prev_k64", "equal", ["B"])
    assert (chosen["B"]["rule"], chosen["B"]["chosen_on"]) == ("first_last", ["A"])
    assert chosen["A"]["evidence"]["mcl4_prev_k64/equal"]["B"]["0"]["ratio"] == pytest.approx(0.2)  # B's val: 0.1 / 0.5
    table, todo = results.headline(recs, chosen)
    row_a0 = next(r for r in table if r.startswith("| A | 0 |"))
    # A's test pairs with B's choice (equal): error 0.1 over the baseline's 0.5; random labels 0.6 / 0.5
    assert "| 0.20 [" in row_a0 and "| 1.20 [" in row_a0 and "≤ 0.5" in row_a0
    assert "| +0.050 [" in row_a0  # integrated by equal (0.90) minus the last stage (0.85), test pairs
    assert any(r.startswith("| C | 0 |") and "not run yet (cmd" in r for r in table)
    assert any("--family C" in c and "--runs mcl4_prev_k64:0" in c for c in todo)
    assert any("--family B" in c and "--runs baseline:2" in c for c in todo)


def test_the_dilution_check_is_on_validation_pairs_and_names_the_least_diluting_rule(tmp_path):
    fill(tmp_path)
    check = results.dilution_check(results.load_all(str(tmp_path)))
    # validation: A first_last 0.9 vs last 0.9 (=), B first_last 0.8 vs last 0.85 (short 0.05)
    assert round(check["first_last"]["worst"][0], 3) == -0.05 and not check["first_last"]["never"]
    assert round(check["equal"]["worst"][0], 3) == -0.1
    assert results.least_diluting(check) == "first_last"
    write(tmp_path, "B", record("B", "mcl4_prev_k64", 0, {"equal": 0.9, "first_last": 0.9, "last": 0.85}))
    check = results.dilution_check(results.load_all(str(tmp_path)))
    assert check["first_last"]["never"] and not check["equal"]["never"]
    write(tmp_path, "B", record("B", "mcl4_prev_k64", 0, {"equal": 0.9, "first_last": 0.9, "last": 0.85}, easy=0.9))
    assert not results.dilution_check(results.load_all(str(tmp_path)))["first_last"]["easy_ok"]


def test_write_replaces_only_its_section_and_records_the_choice(tmp_path):
    fill(tmp_path)
    doc = tmp_path / "results.md"
    doc.write_text("# Title\n\nolder results, earlier protocol\n")
    assert results.main(["--records", str(tmp_path), "--write", str(doc)]) == 0
    first = doc.read_text()
    assert first.startswith("# Title\n\n" + results.BEGIN) and first.endswith("older results, earlier protocol\n")
    assert "| B | 0 | `mcl4_prev_k64` + `first_last` (on A) |" in first and "abc1234" in first
    choice = json.loads((tmp_path / "bench_v2_choice.json").read_text())
    assert choice["choices"]["C"]["chosen_on"] == ["A", "B"] and choice["least_diluting_val"] == "first_last"
    write(tmp_path, "C", record("C", "mcl4_prev_k64", 0, {"equal": 0.75}))
    assert results.main(["--records", str(tmp_path), "--write", str(doc)]) == 0
    second = doc.read_text()
    assert second.count(results.BEGIN) == 1 and second.endswith("older results, earlier protocol\n")
    row_c0 = next(r for r in second.splitlines() if r.startswith("| C | 0 |"))
    assert "| 0.50 [" in row_c0 and row_c0.count("not run yet") == 2  # both controls still to run
