"""Comments and docs say why, not which tracker thread asked: a tracker number means nothing to a
reader without the tracker, and goes stale when the thread is closed (docs/design.md section 9)."""
import os
import re

from conftest import ROOT

CITATION = re.compile(r"\b[Ii]ssues?[ -]#?\d+")
TREES = ("mcl_dist", "tools", "tests", "configs", "docker", "launch", "docs", ".ci")
FILES = ("README.md", "setup.py", "constraints.txt")
TEXT = (".py", ".md", ".sh", ".yaml", ".yml", ".txt", ".cfg", ".ini", "Dockerfile", "run")


def scanned() -> list[str]:
    out = [os.path.join(ROOT, f) for f in FILES]
    for tree in TREES:
        for d, _, files in os.walk(os.path.join(ROOT, tree)):
            out += [os.path.join(d, f) for f in files if f.endswith(TEXT)]
    return out


def test_no_file_cites_an_issue_number():
    files = scanned()
    assert len(files) > 100 and os.path.join(ROOT, "mcl_dist", "pipeline", "runner.py") in files
    hits = [f"{os.path.relpath(p, ROOT)}:{n}" for p in files
            for n, line in enumerate(open(p, encoding="utf-8", errors="replace"), 1)
            if CITATION.search(line)]
    assert hits == []
    assert CITATION.search("see issue" + " 24's table") and not CITATION.search("an issue with 4 ranks")
