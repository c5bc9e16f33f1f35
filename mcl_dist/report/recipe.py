"""What report.md says about how a run was made: the recipe (model, steps, batch, lr, K per stage)
and the wall time and throughput of each step, from the config, the manifest and the metrics."""
from __future__ import annotations

import os
from typing import Any, Optional

from mcl_dist.config.schema import Config, stage_peak_lr
from mcl_dist.core import layout
from mcl_dist.core.files import read_json


def recipe(cfg: Config, world: int, steps_done: dict[int, int], used: Optional[set] = None) -> dict[str, Any]:
    """{"lines": [...], "header": [...], "rows": [...]}: the run's settings, one row per stage.
    `used`: the precisions the trained stages recorded (train.precision resolved on their device)."""
    m, t, c = cfg.model, cfg.train, cfg.cluster
    precision = t.precision
    if used:
        precision = "/".join(sorted(used)) + (f" (train.precision {t.precision})" if {t.precision} != used else "")
    elif t.precision == "auto":
        precision = "auto (no trained stage recorded what it resolved to: amp_bf16 on GPU, fp32 on CPU)"
    name = os.path.splitext(os.path.basename(m.config_file))[0] if m.config_file else m.name
    lines = [
        f"- model: {name}" + (f", weights {m.pretrained}" if m.pretrained else "") +
        (", QuickGELU" if m.force_quick_gelu else "") + (", text tower locked" if m.lock_text else "") +
        (f", image tower locked but {m.lock_image_unlocked_groups} groups" if m.lock_image else ""),
        f"- {world} rank(s), global batch {t.global_batch_size} (accumulation {t.accum_freq}), {t.engine}, "
        f"precision {precision}, objective {cfg.objective}",
        f"- optimizer {t.optimizer}: wd {t.wd:g}, betas {t.beta1:g}/{t.beta2:g}, eps {t.eps:g}; schedule "
        f"{t.lr_scheduler}, warm-up " + (f"{t.warmup_share:g} of each stage" if t.warmup_share > 0
                                          else f"{t.warmup_steps} steps per stage"),
        f"- k-means: {c.kmeans_iters} iterations, tol {c.kmeans_tol:g}, {'spherical' if c.spherical else 'Euclidean'}, "
        f"on {c.embed} embeddings; min label size {c.min_label_size}; integration {m.integration}, "
        f"stage weights {m.integration_weights}",
    ]
    rows = []
    for s, st in enumerate(cfg.stages):
        if s == 0 and st.pretrained:
            rows.append(["0", f"pretrained {st.pretrained}", "–", "–", "–", "–", "–"])
            continue
        init = "–" if s == 0 else st.init
        k, group = ("–", "–") if s == 0 else (str(st.k), str(st.group_size))
        done = steps_done.get(s)
        rows.append([str(s), init, f"{done:,}" if done else "–",
                     f"{done * t.global_batch_size:,}" if done else "–", f"{stage_peak_lr(cfg, s):g}", k, group])
    return {"lines": lines, "header": ["stage", "init", "steps", "samples", "lr", "K", "group"], "rows": rows}


def step_times(run_dir: str, metrics: dict[int, list[dict]], global_batch: int) -> list[list[str]]:
    """Rows of step, wall time and samples/s (training: samples over the step's wall time, and the
    measured rate of the logged steps; embedding: the data's samples over its wall time)."""
    path = layout.manifest_path(run_dir)
    if not os.path.exists(path):
        return []
    steps = read_json(path).get("steps", {})
    check = layout.data_check_path(run_dir)
    n_data = read_json(check).get("usable") if os.path.exists(check) else None
    rows = []
    for name, rec in sorted(steps.items(), key=lambda kv: kv[1].get("started_at", 0.0)):  # in run order
        if rec.get("status") != "done" or "finished_at" not in rec:
            continue
        wall = max(rec["finished_at"] - rec["started_at"], 1e-9)
        rate = "–"
        if name.endswith("/train"):
            recs = metrics.get(layout.stage_of(name), [])
            logged = [r["samples_per_s"] for r in recs if isinstance(r.get("samples_per_s"), (int, float))]
            if recs and logged:
                rate = f"{recs[-1]['step'] * global_batch / wall:,.0f} (logged steps {sum(logged) / len(logged):,.0f})"
        elif name.endswith("/embed") and n_data:
            rate = f"{n_data / wall:,.0f}"
        rows.append([name, _duration(wall), rate])
    return rows


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def wilson(p: float, n: int, z: float = 1.96) -> Optional[tuple[float, float]]:
    """The 95% Wilson score interval of an accuracy p over n trials (sound at p = 0 or 1, unlike p ± 1.96 se)."""
    if not n:
        return None
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
