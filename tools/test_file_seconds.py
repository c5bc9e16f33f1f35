#!/usr/bin/env python
"""Store each test file's measured seconds (tests/fixtures/file_seconds.json), which conftest.py
uses to hand the longest files to the pytest workers first.

    python -m pytest -q tests --junitxml=/tmp/suite.xml
    python tools/test_file_seconds.py /tmp/suite.xml

Why: the workers take whole files (`--dist loadfile`) in collection order, and alphabetical order
left one worker running a long file for minutes after the others had finished (2026-12-07: a
simulation of that run's file times gave 16.9 minutes in that order, 15.6 longest first). A file
missing from the record sorts last; the record only orders, it never selects.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORE = os.path.join(ROOT, "tests", "fixtures", "file_seconds.json")


def file_seconds(junit_path: str) -> dict[str, int]:
    secs: collections.Counter = collections.Counter()
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        # classname is tests.test_x (or tests.test_x.Class): the file is the first two parts
        secs["/".join(module[:2]) + ".py"] += float(case.get("time", 0))
    return {name: round(s) for name, s in sorted(secs.items())}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not os.path.isfile(args[0]):
        print("usage: python tools/test_file_seconds.py JUNIT_XML (from pytest --junitxml)", file=sys.stderr)
        return 2
    try:
        secs = file_seconds(args[0])
    except ET.ParseError as e:
        print(f"error: {args[0]}: not a JUnit XML file ({e})", file=sys.stderr)
        return 2
    tmp = STORE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(secs, f, indent=0, sort_keys=True)
        f.write("\n")
    os.replace(tmp, STORE)
    print(f"wrote {STORE} ({len(secs)} files, {sum(secs.values()) / 60:.1f} worker-minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
