"""The order the workers take test files in (conftest.pytest_collection_modifyitems): longest
recorded first, each file's tests together and in their own order; the record names real files."""
import json
import os
from types import SimpleNamespace

import conftest
from conftest import ROOT

RECORD = os.path.join(ROOT, "tests", "fixtures", "file_seconds.json")


def test_the_record_names_existing_test_files():
    secs = json.load(open(RECORD))
    missing = [name for name in secs if not os.path.isfile(os.path.join(ROOT, name))]
    assert not missing, f"{RECORD}: no such test files {missing}; python tools/test_file_seconds.py JUNIT_XML"
    assert all(isinstance(v, int) and v >= 0 for v in secs.values())


def test_longest_files_first_each_file_together_in_its_own_order():
    secs = json.load(open(RECORD))
    long, short = sorted(secs, key=lambda n: -secs[n])[0], sorted(secs, key=lambda n: secs[n])[0]
    names = [short, long, short, "tests/test_not_recorded.py", long]
    items = [SimpleNamespace(path=os.path.join(ROOT, n), i=i) for i, n in enumerate(names)]
    conftest.pytest_collection_modifyitems(None, items)
    assert [(os.path.relpath(it.path, ROOT), it.i) for it in items] == [
        (long, 1), (long, 4), (short, 0), (short, 2), ("tests/test_not_recorded.py", 3)]


def test_the_workers_keep_that_order():
    """xdist's default would reorder files by their number of tests (--loadscope-reorder)."""
    ini = open(os.path.join(ROOT, "pytest.ini")).read()
    assert "--dist loadfile" in ini and "--no-loadscope-reorder" in ini
