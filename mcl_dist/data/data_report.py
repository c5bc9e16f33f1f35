"""`<run_dir>/data_report.json`: one account of the samples a run could not use, per step and reason.

    {"steps": {"preflight": {"samples": 128, "bad": 23, "reasons": {"lost_in_damaged_tar": 23}, ...},
               "stage_0/train": {"seen": .., "bad": .., "reasons": {"corrupt_image": 3}, "damaged_shards": [..]},
               "stage_1/embed": {...}, "eval": {...}}}

Each step's entry is its whole count, also across a resume: training keeps its counts in its
checkpoints and the embedding keeps one per part, so a resumed step writes the sum of what it
counted before and after the interruption, never only the part after it. The entries of other
steps are kept (a step replaces only its own).

A damaged tar loses its samples in every step that reads it; the loss is counted once, by the
check before training (`preflight`, from the tar index: the typical shard size minus the samples
kept). Streaming steps only name the damaged tars they met, and their reader drops the sample the
damage cut short as the index does, so no step adds the loss again (as `missing_image` or
otherwise). A streaming step's `seen` is the samples it read: the ones it used plus its `bad`.
The evaluation's probe, which reads the training shards, counts no loss of theirs either.
"""
from __future__ import annotations

import os
from typing import Any

from mcl_dist.core.files import read_json, write_json
from mcl_dist.core.layout import data_report_path


def load(run_dir: str) -> dict[str, Any]:
    path = data_report_path(run_dir)
    try:
        data = read_json(path) if os.path.exists(path) else {}
    except ValueError:
        data = {}  # a damaged account is rebuilt from the steps that report next
    return data if isinstance(data.get("steps"), dict) else {"steps": {}}


def record(run_dir: str, step: str, entry: dict[str, Any]) -> None:
    """Rank 0: replace `step`'s entry, keep the others."""
    data = load(run_dir)
    data["steps"][step] = entry
    write_json(data, data_report_path(run_dir))


def stream_entry(total: dict[str, Any]) -> dict[str, Any]:
    """A streaming step's entry from BadSampleMonitor's merged counts: decode failures by reason;
    damaged tars by name only (their loss is the preflight's)."""
    reasons = {k: int(v) for k, v in sorted(dict(total.get("reasons", {})).items())}
    return {"seen": int(total.get("seen", 0)), "bad": sum(reasons.values()), "reasons": reasons,
            "damaged_shards": sorted(total.get("damaged", {}) or {})}


def counted(reasons: dict[str, int]) -> dict[str, Any]:
    """An entry from counts by reason alone (the evaluation's skipped samples and labels)."""
    reasons = {k: int(v) for k, v in sorted(reasons.items())}
    return {"bad": sum(reasons.values()), "reasons": reasons}


def lines(data: dict[str, Any]) -> list[str]:
    """Markdown rows for the report: one per step and reason."""
    rows = [f"| {step} | {reason} | {n} |" for step, entry in data.get("steps", {}).items()
            for reason, n in sorted(entry.get("reasons", {}).items())]
    if not rows:
        return ["No unusable samples were met.\n"]
    return ["| step | reason | samples |", "| --- | --- | --- |", *rows, ""]
