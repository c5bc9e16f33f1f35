"""report (rank 0): `report.md` and its plots (mcl_dist/report/run_report.py) from the stages' metrics, the
cluster sizes, the labels, the evaluation and data_report.json's unusable samples. `report_files`
says which plots this config gets; the report draws only those, and outputs() names them."""
from __future__ import annotations

import os
from dataclasses import dataclass

from mcl_dist.data import data_report

from mcl_dist.core import layout
from mcl_dist.core.files import read_json
from mcl_dist.eval.metric_registry import selected
from mcl_dist.objectives import get_objective
from mcl_dist.report.recipe import recipe, step_times
from mcl_dist.report.run_report import write_report
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step import Step
from mcl_dist.training.metrics_log import read_metrics


def report_files(cfg) -> list[str]:
    """report.md and the plots that have data under this config: loss curves when a stage trains,
    cluster sizes when there are stages >= 1, MMVP when the eval step scores MMVP pairs (eval on,
    mmvp among eval.metrics, a text tower, and an MMVP folder or the synthetic data's own)."""
    trains = len(cfg.stages) > 1 or not cfg.stages[0].pretrained
    ev = cfg.eval
    mmvp = ev.enabled and "mmvp" in {m.name for m in selected(ev.metrics)} and get_objective(cfg).captions \
        and bool(ev.mmvp_dir or cfg.data.synthetic)
    return [layout.REPORT] + [layout.LOSS_PLOT] * trains + [layout.CLUSTER_PLOT] * (len(cfg.stages) > 1) \
        + [layout.MMVP_PLOT] * mmvp


def label_stats(ctx: RunContext, s: int) -> dict:
    """What the labels step recorded, and how the sampler used the labels (docs/design.md, "what a
    prototype measured")."""
    rec = ctx.record(layout.step_name("labels", s))
    if not rec:
        return {}
    stats = dict(rec.get("outputs", {}))
    plan = (ctx.record(layout.step_name("train", s)) or {}).get("outputs", {}).get("plan", {})
    for k in ("short_group_share", "groups_per_micro_batch", "skipped_singletons", "dropped"):
        if k in plan:
            stats[k] = round(plan[k], 3) if isinstance(plan[k], float) else plan[k]
    return stats


def used_precisions(ctx: RunContext) -> set:
    """What the trained stages ran at (their train records), e.g. {"amp_bf16"} for train.precision auto on GPUs."""
    recs = [(ctx.record(layout.step_name("train", s)) or {}).get("outputs", {}) for s in range(len(ctx.cfg.stages))]
    return {r["precision"] for r in recs if isinstance(r.get("precision"), str)}


@dataclass
class ReportStep(Step):
    kind = "report"
    main_only = True

    def outputs(self, run_dir: str, world: int) -> list[str]:
        return [os.path.join(run_dir, name) for name in report_files(self.cfg)]

    def describe(self, world: int) -> str:
        return f"{layout.REPORT} with the evaluation by stage, loss curves, cluster sizes and label statistics"

    def run(self, ctx: RunContext) -> dict:
        stages = range(len(ctx.cfg.stages))
        metrics = {s: read_metrics(ctx.stage_dir(s)) for s in stages}
        curves = {s: [(r["step"], r["loss"]) for r in metrics[s] if "loss" in r] for s in stages}
        sizes = {}
        for s in stages:
            km = layout.kmeans_summary_path(ctx.run_dir, s)
            if os.path.exists(km):
                sizes[s] = read_json(km)["sizes"]
        labelled = {s: st for s in stages if (st := label_stats(ctx, s))}
        res_path = layout.results_path(ctx.run_dir)
        results = read_json(res_path) if os.path.exists(res_path) else {}
        done = {s: metrics[s][-1]["step"] for s in stages if metrics[s]}
        return {"report": write_report(ctx.run_dir, results, curves, sizes, labelled,
                                       recipe(ctx.cfg, ctx.info.world_size, done, used_precisions(ctx)),
                                       step_times(ctx.run_dir, metrics, ctx.cfg.train.global_batch_size),
                                       data_report.load(ctx.run_dir), plots=report_files(ctx.cfg))}
