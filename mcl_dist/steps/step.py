"""The Step interface: one object per step of a run (mcl_dist/steps/__init__.py lists them).

A step owns its name, the settings its result depends on (their fingerprint is recorded in the
manifest), the paths it writes (`outputs`: what `--redo` removes, the manifest checksums and
`--dry-run` prints), a line for the dry run (`describe`) and its body (`run`). `outputs` names
exactly what `run` writes under the same config (each step derives both from one function where a
file depends on a setting), with the paths of mcl_dist/core/layout.py. Paths may hold a brace range
(`part{0000..0007}`) and a `*`; a path ending in `/` is a folder the step owns whole.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

from braceexpand import braceexpand

from mcl_dist.config.schema import Config
from mcl_dist.core.layout import step_name
from mcl_dist.run.manifest import fingerprint
from mcl_dist.run.run_context import RunContext


@dataclass
class Step:
    cfg: Config
    settings: dict = field(default_factory=dict)  # filled by the plan (upstream fingerprints included)
    kind = ""  # train, embed, kmeans, labels, integrate, eval, report
    main_only = False  # rank 0 alone, the others wait outside any collective

    @property
    def name(self) -> str:
        return self.kind

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def result_settings(self) -> dict:
        """What the result depends on besides the upstream steps' fingerprints."""
        return {}

    def outputs(self, run_dir: str, world: int) -> list[str]:
        return []

    def describe(self, world: int) -> str:
        return ""

    def run(self, ctx: RunContext) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class StageStep(Step):
    """A step of one stage, named `stage_<s>/<kind>`."""

    stage: int = 0

    @property
    def name(self) -> str:
        return step_name(self.kind, self.stage)


def existing(pattern: str) -> list[str]:
    """The paths on disk that an output pattern names (folders with a trailing '/')."""
    out = []
    for p in braceexpand(pattern):
        out += [m + "/" if os.path.isdir(m) else m for m in glob.glob(p.rstrip("/"))]
    return out
