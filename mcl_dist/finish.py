"""The end of a run: integrated model, evaluation of every stage and the integration, report."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from mcl_dist import distributed as dist_utils
from mcl_dist.io import load_torch, read_json, write_json

log = logging.getLogger("mcl_dist")


def integrated_path(run_dir: str) -> str:
    return os.path.join(run_dir, "integrated", "model.pt")


def integrate_step(pipe) -> dict:
    from mcl_dist.integrate import save_integrated

    if pipe.info.is_main:
        names, states, config = [], [], None
        for s in range(len(pipe.cfg.stages)):
            ck = load_torch(os.path.join(pipe.stage_dir(s), "checkpoint.pt"))
            names.append(ck["model_name"])
            states.append(ck["state_dict"])
            config = ck.get("model_config", config)
        save_integrated(integrated_path(pipe.run_dir), names, states, None, config)
    return {"model": integrated_path(pipe.run_dir)}


def _models(pipe) -> list[tuple[str, str]]:
    out = [(f"stage_{s}", os.path.join(pipe.stage_dir(s), "checkpoint.pt")) for s in range(len(pipe.cfg.stages))]
    return out + [("integrated", integrated_path(pipe.run_dir))]


def eval_step(pipe) -> dict:
    """Rank 0 evaluates; the other ranks wait (evaluation sets are small)."""
    results: dict[str, Any] = {}
    if pipe.info.is_main:
        from mcl_dist.eval import evaluate_model

        for i, (name, path) in enumerate(_models(pipe)):
            log.info("evaluating %s", name)
            results[name] = evaluate_model(path, pipe.cfg, pipe.urls, device=pipe.info.device)
            if pipe.cfg.debug.kill_at == f"eval:{i + 1}":  # tests: killed half-way through evaluation
                dist_utils.kill_job_now()
        write_json(results, os.path.join(pipe.run_dir, "eval", "results.json"))
    return {"results": os.path.join(pipe.run_dir, "eval", "results.json")}


def report_step(pipe) -> dict:
    from mcl_dist.metrics import read_metrics
    from mcl_dist.report import write_report

    path = os.path.join(pipe.run_dir, "report.md")
    if pipe.info.is_main:
        stages = range(len(pipe.cfg.stages))
        curves = {s: [(r["step"], r["loss"]) for r in read_metrics(pipe.stage_dir(s)) if "loss" in r] for s in stages}
        sizes, label_stats = {}, {}
        for s in stages:
            km = os.path.join(pipe.stage_dir(s), "kmeans", "kmeans.json")
            if os.path.exists(km):
                sizes[s] = read_json(km)["sizes"]
            rec = pipe.manifest.step(f"stage_{s}/labels")
            if rec:
                label_stats[s] = dict(rec.get("outputs", {}))
                # how the sampler used the labels (DESIGN section 7: small groups, several per batch)
                plan = (pipe.manifest.step(f"stage_{s}/train") or {}).get("outputs", {}).get("plan", {})
                for k in ("short_group_share", "groups_per_micro_batch", "skipped_singletons", "dropped"):
                    if k in plan:
                        label_stats[s][k] = round(plan[k], 3) if isinstance(plan[k], float) else plan[k]
        res_path = os.path.join(pipe.run_dir, "eval", "results.json")
        results = read_json(res_path) if os.path.exists(res_path) else {}
        path = write_report(pipe.run_dir, results, curves, sizes, label_stats)
    return {"report": path}


def finish_run(pipe) -> None:
    ups = [pipe.fps[f"stage_{s}/train"] for s in range(len(pipe.cfg.stages))]
    pipe.run_step("integrate", {"upstream": ups}, lambda: integrate_step(pipe), main_only=True)
    if pipe.cfg.eval.enabled:
        ev = json.loads(json.dumps(pipe.cfg.eval.__dict__, default=str))
        pipe.run_step("eval", {"upstream": [pipe.fps["integrate"]], "eval": ev}, lambda: eval_step(pipe), main_only=True)
    up = [pipe.fps["integrate"]] + ([pipe.fps["eval"]] if "eval" in pipe.fps else [])
    out = pipe.run_step("report", {"upstream": up}, lambda: report_step(pipe), main_only=True)
    if pipe.info.is_main:
        print(f"\nMCL run finished. Report: {out.get('report')}\nIntegrated model: {integrated_path(pipe.run_dir)} "
              f"(load with mcl_dist.load_model)", flush=True)
    dist_utils.barrier()
