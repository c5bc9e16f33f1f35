"""The run report: `<run_dir>/report.md` with the evaluations by stage (and integrated) and plots.

Every input may be partial (a run without MMVP data, a stage without k-means, an evaluation that
was switched off): the report then says what is missing instead of failing, because it is
written at the very end of a long run.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Optional

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from mcl_dist import data_report
from mcl_dist.files import atomic_path, write_text

# what write_report may write into the run directory (`--redo report` or earlier removes them all)
REPORT_FILES = ("report.md", "loss_curves.png", "cluster_sizes.png", "mmvp_by_stage.png")

SCORE_KEYS = ("top1", "top5", "mean", "overall")  # the leaves worth a table column; counts are not


def _order(name: str) -> tuple:
    m = re.fullmatch(r"stage_(\d+)", str(name))
    return (0, int(m.group(1)), "") if m else (1 if name == "integrated" else 2, 0, str(name))


_GROUPS = ("zero_shot", "linear_probe", "knn")  # evaluation groups keyed by attribute, in table order
_TITLES = {"zero_shot": "Zero-shot", "linear_probe": "Linear probe", "knn": "k-NN"}


def _score(res: dict, group: str, attr: str, leaf: str) -> Optional[float]:
    v = ((res.get(group) or {}).get(attr) or {}).get(leaf) if isinstance(res.get(group), dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _metric_tables(results: dict, models: list[str]) -> list[str]:
    """One table per metric (zero-shot top-1, top-5, linear probe, k-NN, ...): rows = models,
    columns = attributes. The old single table was 27 columns wide."""
    groups = [g for g in _GROUPS if any(isinstance(results[m].get(g), dict) for m in models)]
    groups += sorted({g for m in models for g, v in results[m].items()
                      if g not in _GROUPS and g not in ("mmvp", "notes", "model") and isinstance(v, dict)
                      and any(isinstance(x, dict) for x in v.values())})
    out = []
    for g in groups:
        attrs = sorted({a for m in models for a, v in (results[m].get(g) or {}).items() if isinstance(v, dict)})
        for leaf in SCORE_KEYS:
            if not any(_score(results[m], g, a, leaf) is not None for m in models for a in attrs):
                continue
            title = f"{_TITLES.get(g, g)} {leaf.replace('top', 'top-')}"
            rows = [[m] + [_fmt(_score(results[m], g, a, leaf)) for a in attrs] for m in models]
            out.append(f"### {title}\n\n" + _table(["model"] + attrs, rows) + "\n")
    return out


def _summary(results: dict, models: list[str]) -> list[str]:
    """Five lines: MMVP mean and the per-attribute linear probe, best stage and integrated vs stage 0."""
    stages = [m for m in models if re.fullmatch(r"stage_\d+", m)]
    stages = [m for m in stages if m != "stage_0"] or stages  # "best" = best of the MCL stages
    mm = {m: (results[m].get("mmvp") or {}).get("mean") for m in models}
    mm = {m: v for m, v in mm.items() if isinstance(v, (int, float))}
    lines = []
    if "stage_0" in mm:
        best = max((m for m in stages if m in mm), key=lambda m: mm[m], default="stage_0")
        integ = f"; integrated {mm['integrated']:.3f} ({mm['integrated'] - mm['stage_0']:+.3f})" if "integrated" in mm else ""
        lines.append(f"- MMVP mean: stage_0 {mm['stage_0']:.3f}; best later stage {best} {mm[best]:.3f} "
                     f"({mm[best] - mm['stage_0']:+.3f}){integ}")
    else:
        lines.append("- MMVP mean: no MMVP results for stage_0")
    attrs = sorted({a for m in models for a, v in (results[m].get("linear_probe") or {}).items() if isinstance(v, dict)})
    base = {a: _score(results.get("stage_0", {}), "linear_probe", a, "top1") for a in attrs}
    attrs = [a for a in attrs if base[a] is not None]
    if attrs:
        best = {}
        for a in attrs:
            scored = [(m, _score(results[m], "linear_probe", a, "top1")) for m in stages]
            best[a] = max(((m, v) for m, v in scored if v is not None), key=lambda mv: mv[1])
        lines.append("- linear probe top-1 of stage_0: " + ", ".join(f"{a} {base[a]:.3f}" for a in attrs))
        lines.append("- best later stage per attribute: " + ", ".join(
            f"{a} {best[a][0]} {best[a][1]:.3f} ({best[a][1] - base[a]:+.3f})" for a in attrs))
        integ = {a: _score(results.get("integrated", {}), "linear_probe", a, "top1") for a in attrs}
        if all(v is not None for v in integ.values()):
            wins = sum(integ[a] > base[a] for a in attrs)
            lines.append("- integrated vs stage_0: " + ", ".join(f"{a} {integ[a] - base[a]:+.3f}" for a in attrs))
            lines.append(f"- integrated beats stage_0 on {wins} of {len(attrs)} probed attributes")
        else:
            lines.append("- integrated: no linear-probe results")
    else:
        lines.append("- linear probe: no per-attribute results for stage_0")
    return lines


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _save(fig: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # the temp name has no .png suffix
    plt.close(fig)


def _plot_by_stage(path: str, series: dict, draw: Callable[[Any, Any, Any], None], **axes: Any) -> bool:
    """One line per stage that has data, in stage order; False (and no file) when none has."""
    series = {s: v for s, v in series.items() if v}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in sorted(series, key=lambda s: _order(f"stage_{s}")):
        draw(ax, s, series[s])
    ax.set(**axes)
    ax.legend()
    _save(fig, path)
    return True


def _draw_loss(ax: Any, s: Any, curve: list) -> None:
    steps, losses = zip(*[(p[0], p[1]) for p in curve])
    ax.plot(steps, losses, marker="." if len(steps) < 50 else None, label=f"stage {s}")


def _draw_sizes(ax: Any, s: Any, sizes: list) -> None:
    v = sorted(sizes, reverse=True)
    ax.plot(range(1, len(v) + 1), [max(x, 0.5) for x in v], marker=".", label=f"stage {s} (K={len(v)})")


def _plot_losses(path: str, curves: dict) -> bool:
    return _plot_by_stage(path, curves, _draw_loss, xlabel="step", ylabel="training loss", title="Loss by stage")


def _plot_clusters(path: str, sizes: dict) -> bool:
    return _plot_by_stage(path, sizes, _draw_sizes, xlabel="cluster rank", ylabel="samples", yscale="log",
                          title="k-means cluster sizes (sorted)")


def _plot_mmvp(path: str, mmvp: dict[str, dict]) -> bool:
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


def write_report(run_dir: str, results: dict, loss_curves: dict, cluster_sizes: dict, label_stats: dict,
                 data: Optional[dict] = None) -> str:
    """Write report.md and its PNGs into `run_dir`; returns the report's path."""

    matplotlib.use("Agg")  # no display on cluster nodes
    results = {k: v for k, v in (results or {}).items() if isinstance(v, dict)}
    models = sorted(results, key=_order)
    md = [f"# MCL run report\n\nRun directory: `{os.path.abspath(run_dir)}`\n", "## Summary\n"]
    md.append("\n".join(_summary(results, models)) + "\n" if models else "No evaluation results.\n")
    md.append("## Evaluation\n")
    tables = _metric_tables(results, models)
    if tables:
        md += tables
        md.append("Accuracies are fractions (1.0 = all correct); MMVP counts a pair only if both statements "
                  "pick their own image.\n")
    else:
        md.append("No evaluation results (evaluation disabled or not run).\n")

    mmvp = {m: results[m]["mmvp"] for m in models if isinstance(results[m].get("mmvp"), dict) and results[m]["mmvp"]}
    md.append("## MMVP-VLM pairs\n")
    if mmvp:
        cats = sorted({c for r in mmvp.values() for c in r.get("per_category", {})})
        rows = [[m] + [_fmt(mmvp[m].get("per_category", {}).get(c)) for c in cats] + [_fmt(mmvp[m].get("mean"))]
                for m in mmvp]
        md.append(_table(["model"] + cats + ["**mean**"], rows) + "\n")
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

    md.append("## Unusable samples\n")
    md += data_report.lines(data or {})
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
