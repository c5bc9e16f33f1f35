"""eval (rank 0): every stage and the integrated model scored by the eval metrics
(mcl_dist/eval/); writes `eval/results.json` and the integrated model's skipped samples and
labels as the `eval` entry of data_report.json."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from mcl_dist.data import data_report

from mcl_dist.run import verify

from mcl_dist.core import layout
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core.files import write_json
from mcl_dist.eval.run_metrics import evaluate_model
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step import Step

log = logging.getLogger("mcl_dist")


@dataclass
class EvalStep(Step):
    kind = "eval"
    main_only = True

    def result_settings(self) -> dict:
        ev = json.loads(json.dumps(self.cfg.eval.__dict__, default=str))
        if not ev.get("metrics"):  # the default (every metric with data) keeps older runs' fingerprints
            ev.pop("metrics", None)
        return {"eval": ev, "files": verify.eval_files(self.cfg)}  # class names, questions, shards by content

    def outputs(self, run_dir: str, world: int) -> list[str]:
        return [layout.results_path(run_dir)]

    def describe(self, world: int) -> str:
        return f"metrics {', '.join(self.cfg.eval.metrics) or 'all with data'} on every stage and the integrated model"

    def run(self, ctx: RunContext) -> dict:
        """Rank 0 only: every stage and the integrated model (evaluation sets are small)."""
        models = [(layout.stage_name(s), layout.stage_checkpoint(ctx.run_dir, s)) for s in range(len(ctx.cfg.stages))]
        results: dict[str, Any] = {}
        for i, (name, path) in enumerate(models + [("integrated", layout.integrated_path(ctx.run_dir))]):
            log.info("evaluating %s", name)
            results[name] = evaluate_model(path, ctx.cfg, ctx.data, device=ctx.info.device)
            # relative to the run directory: equal results in two run directories are equal files
            results[name]["model"] = os.path.relpath(path, ctx.run_dir)
            if ctx.cfg.debug.kill_at == f"eval:{i + 1}":  # tests: killed half-way through evaluation
                dist_utils.kill_job_now()
        write_json(results, layout.results_path(ctx.run_dir))
        data_report.record(ctx.run_dir, self.name, data_report.counted(results["integrated"].get("skipped", {})))
        return {"results": layout.results_path(ctx.run_dir)}
