"""Rank-0 metrics: a JSONL file per stage, plus the reporters of train.report_to (loggers.py)."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

from mcl_dist.core.files import write_text
from mcl_dist.core.layout import metrics_path

log = logging.getLogger("mcl_dist")


class MetricsLogger:
    def __init__(self, stage_dir: str, enabled: bool, reporters: Callable[[], list] = list):
        """`reporters` opens the extra sinks (TensorBoard, wandb) on the rank that logs."""
        self.enabled = enabled
        self.path = metrics_path(stage_dir)
        self.reporters: list = []
        if not enabled:
            return
        os.makedirs(stage_dir, exist_ok=True)
        self.reporters = reporters()

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        # one line per write, appended: a killed run loses at most the line in flight
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        for r in self.reporters:
            r.log(step, values)

    def close(self) -> None:
        for r in self.reporters:
            r.close()


def read_metrics(stage_dir: str) -> list[dict]:
    path = metrics_path(stage_dir)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill
    return out


def truncate_after(stage_dir: str, step: int) -> None:
    """On resume drop records past the checkpoint step, so curves have no duplicates."""
    records = [r for r in read_metrics(stage_dir) if r.get("step", 0) <= step]

    if os.path.exists(metrics_path(stage_dir)):
        write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), metrics_path(stage_dir))
