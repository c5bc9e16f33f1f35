"""stage_s/kmeans: distributed Lloyd over the ranks' embedding shares (mcl_dist/clustering/kmeans.py).

Writes `stage_s/kmeans/assign<rank>-of<world>.npz` (keys, cluster ids), `centroids.npz` and
`kmeans.json` (inertia per iteration, sizes; with `k: auto` the chosen K and the rule's curve,
mcl_dist/clustering/auto_k.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from mcl_dist.clustering.auto_k import choose_k
from mcl_dist.clustering.embedding import check_parts, load_share
from mcl_dist.clustering.kmeans import kmeans
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core import layout
from mcl_dist.core.files import save_npz, write_json
from mcl_dist.data.preflight import DataError
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step import StageStep
from mcl_dist.steps.step_helpers import redo_hint, remove_stale

log = logging.getLogger("mcl_dist")


@dataclass
class KMeansStep(StageStep):
    kind = "kmeans"

    def result_settings(self) -> dict:
        c = self.cfg
        out = {"k": c.stages[self.stage].k, "iters": c.cluster.kmeans_iters, "tol": c.cluster.kmeans_tol,
               "spherical": c.cluster.spherical, "backend": c.cluster.backend, "seed": c.train.seed}
        if out["k"] == "auto":  # only then: fixed-K runs keep their fingerprints
            out["k_rule"] = {"rule": c.cluster.k_rule, "candidates": c.cluster.k_candidates, "min_gain": c.cluster.k_min_gain}
        return out

    def outputs(self, run_dir: str, world: int) -> list[str]:
        return [layout.assignments_pattern(layout.kmeans_dir(run_dir, self.stage), world),
                layout.centroids_path(run_dir, self.stage), layout.kmeans_summary_path(run_dir, self.stage)]

    def describe(self, world: int) -> str:
        c = self.cfg.cluster
        k = self.cfg.stages[self.stage].k
        k = f"auto ({c.k_rule} over {c.k_candidates}, min gain {c.k_min_gain})" if k == "auto" else k
        return (f"K={k}, {c.kmeans_iters} iterations, {c.backend} backend"
                f"{', spherical' if c.spherical else ''}")

    def run(self, ctx: RunContext) -> dict:
        c, info, s = ctx.cfg, ctx.info, self.stage
        out, embedded = layout.kmeans_dir(ctx.run_dir, s), layout.embed_dir(ctx.run_dir, s)
        embed_step = layout.step_name("embed", s)
        remove_stale(layout.assignments_glob(out), info.world_size)
        check_parts(embedded, info.world_size, embed_step)
        feats, keys = load_share(embedded, info.rank, info.world_size)
        kill_at = ctx.kill_step(self.name)
        try:
            x, rule = torch.from_numpy(np.ascontiguousarray(feats)), None
            kw = dict(iters=c.cluster.kmeans_iters, tol=c.cluster.kmeans_tol, seed=c.train.seed + s,
                      spherical=c.cluster.spherical, backend=c.cluster.backend, device=info.device,
                      progress=info.is_main,
                      on_iter=(lambda it: it == kill_at and dist_utils.kill_launcher()) if kill_at else None)
            if c.stages[s].k == "auto":
                res, rule = choose_k(x, c.cluster.k_candidates, c.cluster.k_min_gain, **kw)
                if rule["capped"] and info.is_main:
                    log.warning("%s: k: auto kept the largest candidate, K=%d: every larger K still lowered the "
                                "spread by >= %.2f (cluster.k_min_gain), so the rule found no K on this data; "
                                "add larger cluster.k_candidates or set a fixed k", self.name, rule["chosen"],
                                c.cluster.k_min_gain)
            else:
                res = kmeans(x, c.stages[s].k, **kw)
        except ValueError as e:  # every rank raises the same: NaN/inf rows, k larger than the data, ...
            msg = f"{self.name} on {embedded}: {e}"
            raise (redo_hint(ValueError(msg), embed_step) if "NaN or inf" in str(e) else DataError(msg)) from None
        save_npz(layout.assignment_path(out, info.rank, info.world_size), keys=keys,
                 clusters=res.assignments.numpy().astype(np.int32))
        k = int(res.centroids.shape[0])
        summary = {"k": k, "inertia": [float(v) for v in res.inertia], "iterations": res.iterations,
                   "converged": bool(res.converged), "sizes": res.sizes.tolist(), **({"k_rule": rule} if rule else {})}
        if info.is_main:
            save_npz(layout.centroids_path(ctx.run_dir, s), centroids=res.centroids.numpy())
            write_json(summary, layout.kmeans_summary_path(ctx.run_dir, s))
        return {"k": k, "iterations": res.iterations, "final_inertia": summary["inertia"][-1] if res.inertia else None,
                **({"k_curve": [[p["k"], p["inertia"]] for p in rule["curve"]]} if rule else {})}
