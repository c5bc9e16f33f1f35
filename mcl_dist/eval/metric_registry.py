"""Every eval metric in one registry: its name (the key under which its results appear and the name
`eval.metrics` lists), whether it needs a text tower, and its body (mcl_dist/eval/metrics.py).

Adding a metric: write its body (a function of EvalInputs returning {what it scored: scores}) in
its own module and add one line to METRICS. `validate` checks `eval.metrics` when the config loads.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from mcl_dist.config.origins import blame
from mcl_dist.config.schema import Config, ConfigError
from mcl_dist.eval import metrics


@dataclass(frozen=True)
class Metric:
    name: str
    needs_text: bool  # scored through the text tower (an image-only objective cannot)
    run: Optional[Callable[[Any], dict]]  # body(EvalInputs) -> results; None: a command of its own
    command: str = ""  # a metric run by its own console command rather than the pipeline's eval step


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("zero_shot", True, metrics.zero_shot),
    Metric("linear_probe", False, metrics.linear_probe_metric),
    Metric("knn", False, metrics.knn_metric),
    Metric("mmvp", True, metrics.mmvp_metric),
    Metric("clip_benchmark", True, None, command="mcl-clip-benchmark"),  # mcl_dist/eval/clip_benchmark.py
)}
PIPELINE = [m for m in METRICS.values() if m.run is not None]  # what an empty eval.metrics means


def selected(names) -> list[Metric]:
    return [METRICS[n] for n in names] if names else PIPELINE


def validate(cfg: Config, where: str, captions: bool) -> None:
    """`eval.metrics`: known names, run by the eval step, and possible for the objective."""
    for name in cfg.eval.metrics:
        m = METRICS.get(name)
        if m is None:
            close = difflib.get_close_matches(str(name), list(METRICS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{blame(where, 'eval.metrics')}: 'eval.metrics' lists unknown metric {name!r}; known: "
                              f"{', '.join(METRICS)}{hint}")
        if m.run is None:
            raise ConfigError(f"{blame(where, 'eval.metrics')}: 'eval.metrics': {name} is not run by the pipeline; run `{m.command}` "
                              f"on the run's checkpoints instead")
        if m.needs_text and not captions:
            raise ConfigError(f"{blame(where, 'eval.metrics', 'objective')}: 'eval.metrics': {name} needs a text tower, which objective "
                              f"{cfg.objective} has not")
