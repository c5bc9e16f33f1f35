"""Drift: the feature-suppression benchmark's data, generated at a small size, and one short seeded
benchmark run must reproduce the stored values (tests/fixtures/bench_drift.json); a change of code
or package that moves them fails here and names what moved. After a change meant to move them:
python tools/bench_suppression_drift.py --write (and say so in the commit)."""
import importlib.util
import os
import sys

import pytest

from conftest import ROOT
import forked_ranks


def drift_module():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    spec = importlib.util.spec_from_file_location("bench_suppression_drift",
                                                  os.path.join(ROOT, "tools", "bench_suppression_drift.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


drift = drift_module()


@pytest.mark.launch
def test_benchmark_data_and_a_short_run_reproduce_the_stored_values(tmp_path):
    from mcl_dist.core.files import read_json

    stored = read_json(drift.STORED)
    now = {"data": {fam: drift.data_parts(fam, str(tmp_path / "d")) for fam in stored["data"]},
           "run": drift.run_metrics(str(tmp_path / "r"),
                                    lambda argv, env: forked_ranks.python(argv, cwd=ROOT, env=env, timeout=600))}
    moved = drift.moved(stored, now)
    assert not moved, "the benchmark drifted (regenerate only if the change is meant): " + "; ".join(moved)


def test_drift_names_what_moved():
    stored = {"data": {"A": {"pixels": "aa", "png": "bb"}}, "run": {"stage_1 loss_end": 2.5, "data digest": "cc"}}
    now = {"data": {"A": {"pixels": "aa", "png": "xx"}}, "run": {"stage_1 loss_end": 2.51, "data digest": "cc"}}
    assert drift.moved(stored, now) == ["data A png: bb -> xx", "run stage_1 loss_end: 2.5 -> 2.51"]
    now["run"]["stage_1 loss_end"] = 2.5005  # within the tolerance
    now["data"]["A"]["png"] = "bb"
    assert drift.moved(stored, now) == []
