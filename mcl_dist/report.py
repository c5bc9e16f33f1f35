"""The run report: `<run_dir>/report.md` with the evaluations by stage (and integrated) and plots.

Every input may be partial (a run without MMVP data, a stage without k-means, an evaluation that
was switched off): the report then says what is missing instead of failing, because it is
written at the very end of a long run.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional

from mcl_dist.io import atomic_path, write_text

SCORE_KEYS = ("top1", "top5", "mean", "overall")  # the leaves worth a table column; counts are not


def _order(name: str) -> tuple:
    m = re.fullmatch(r"stage_(\d+)", str(name))
    return (0, int(m.group(1)), "") if m else (1 if name == "integrated" else 2, 0, str(name))


def _flatten(res: Any, prefix: str = "") -> dict[str, float]:
    """{"zero_shot/color top1": 0.8, "mmvp mean": 0.9, ...} from one model's nested results."""
    out: dict[str, float] = {}
    if not isinstance(res, dict):
        return out
    for k, v in res.items():
        if k in ("per_category", "notes", "model"):
            continue
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif k in SCORE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix.rstrip('/')} {k}".strip()] = float(v)
    return out


def _column_order(col: str) -> tuple:
    group = re.split(r"[/ ]", col, maxsplit=1)[0]
    groups = ("zero_shot", "linear_probe", "knn", "mmvp")
    return (groups.index(group) if group in groups else len(groups), col)


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _save(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # the temp name has no .png suffix
    plt.close(fig)


def _plot_losses(path: str, curves: dict) -> bool:
    import matplotlib.pyplot as plt

    curves = {s: c for s, c in curves.items() if c}
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in sorted(curves, key=lambda s: _order(f"stage_{s}")):
        steps, losses = zip(*[(p[0], p[1]) for p in curves[s]])
        ax.plot(steps, losses, marker="." if len(steps) < 50 else None, label=f"stage {s}")
    ax.set(xlabel="step", ylabel="training loss", title="Loss by stage")
    ax.legend()
    _save(fig, path)
    return True


def _plot_clusters(path: str, sizes: dict) -> bool:
    import matplotlib.pyplot as plt

    sizes = {s: v for s, v in sizes.items() if v}
    if not sizes:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in sorted(sizes, key=lambda s: _order(f"stage_{s}")):
        v = sorted(sizes[s], reverse=True)
        ax.plot(range(1, len(v) + 1), [max(x, 0.5) for x in v], marker=".", label=f"stage {s} (K={len(v)})")
    ax.set(xlabel="cluster rank", ylabel="samples", yscale="log", title="k-means cluster sizes (sorted)")
    ax.legend()
    _save(fig, path)
    return True


def _plot_mmvp(path: str, mmvp: dict[str, dict]) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np

    if not mmvp:
        return False
    cats = sorted({c for r in mmvp.values() for c in r.get("per_category", {})})
    labels = cats + ["mean"]
    models = list(mmvp)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    for i, m in enumerate(models):
        vals = [mmvp[m].get("per_category", {}).get(c, float("nan")) for c in cats] + [mmvp[m].get("mean", float("nan"))]
        ax.bar(np.arange(len(labels)) + i * width - 0.4 + width / 2, vals, width, label=m)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    ax.set(ylabel="pair accuracy", ylim=(0, 1), title="MMVP-VLM pairs by stage")
    ax.legend()
    _save(fig, path)
    return True


def write_report(run_dir: str, results: dict, loss_curves: dict, cluster_sizes: dict, label_stats: dict) -> str:
    """Write report.md and its PNGs into `run_dir`; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    results = {k: v for k, v in (results or {}).items() if isinstance(v, dict)}
    models = sorted(results, key=_order)
    md = [f"# MCL run report\n\nRun directory: `{os.path.abspath(run_dir)}`\n", "## Evaluation\n"]

    flat = {m: _flatten(results[m]) for m in models}
    cols = sorted({c for f in flat.values() for c in f}, key=_column_order)
    if cols:
        md.append(_table(["model"] + cols, [[m] + [_fmt(flat[m].get(c)) for c in cols] for m in models]))
        md.append("\nAccuracies are fractions (1.0 = all correct); MMVP counts a pair only if both statements "
                  "pick their own image.\n")
    else:
        md.append("No evaluation results (evaluation disabled or not run).\n")

    mmvp = {m: results[m]["mmvp"] for m in models if isinstance(results[m].get("mmvp"), dict)}
    md.append("## MMVP-VLM pairs\n")
    if mmvp:
        cats = sorted({c for r in mmvp.values() for c in r.get("per_category", {})})
        rows = [[c] + [_fmt(mmvp[m].get("per_category", {}).get(c)) for m in mmvp] for c in cats]
        rows.append(["**mean**"] + [_fmt(mmvp[m].get("mean")) for m in mmvp])
        md.append(_table(["category"] + list(mmvp), rows) + "\n")
        if _plot_mmvp(os.path.join(run_dir, "mmvp_by_stage.png"), mmvp):
            md.append("![MMVP by stage](mmvp_by_stage.png)\n")
    else:
        md.append("No MMVP results (no MMVP-VLM folder was given, or evaluation was not run).\n")

    notes = [(m, n) for m in models for n in results[m].get("notes", [])]
    if notes:
        md.append("## Skipped evaluations\n")
        md += [f"- {m}: {n}" for m, n in notes] + [""]

    md.append("## Training loss\n")
    if _plot_losses(os.path.join(run_dir, "loss_curves.png"), loss_curves or {}):
        md.append("![loss curves](loss_curves.png)\n")
    else:
        md.append("No loss curves recorded.\n")

    md.append("## Clusters and pseudo-labels\n")
    if _plot_clusters(os.path.join(run_dir, "cluster_sizes.png"), cluster_sizes or {}):
        md.append("![cluster sizes](cluster_sizes.png)\n")
    else:
        md.append("No k-means cluster sizes recorded (single-stage run, or clustering not run).\n")
    stats = {s: v for s, v in (label_stats or {}).items() if isinstance(v, dict) and v}
    if stats:
        keys = sorted({k for v in stats.values() for k, x in v.items() if _scalar(x)})
        order = sorted(stats, key=lambda s: _order(f"stage_{s}"))
        rows = [[f"stage {s}"] + [_cell(stats[s].get(k)) for k in keys] for s in order]
        md.append(_table(["stage"] + keys, rows) + "\n")
    else:
        md.append("No pseudo-label statistics recorded.\n")

    path = os.path.join(run_dir, "report.md")
    write_text("\n".join(md), path)
    return path


def _scalar(x: Any) -> bool:
    # numbers and short words; paths and nested outputs stay out of the table
    return isinstance(x, (int, float)) or (isinstance(x, str) and len(x) < 40 and "/" not in x)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
