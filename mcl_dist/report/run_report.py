"""The run report: `<run_dir>/report.md` with the evaluations by stage (and integrated) and plots.

Every input may be partial (a run without MMVP data, a stage without k-means, an evaluation that
was switched off): the report then says what is missing instead of failing, because it is
written at the very end of a long run.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Collection, Optional

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from mcl_dist.data import data_report

from mcl_dist.core import layout
from mcl_dist.core.files import atomic_path, write_text
from mcl_dist.report.recipe import wilson

# the plots write_report may draw into the run directory, each beside report.md
PLOTS = (layout.LOSS_PLOT, layout.CLUSTER_PLOT, layout.MMVP_PLOT)

SCORE_KEYS = ("top1", "top5", "mean", "overall")  # the leaves worth a table column; counts are not
MAX_COLUMNS = 10  # wider tables are cut into several, each repeating the first column
MMVP_CHANCE = 0.25  # a pair counts only when both statements pick their own image: 1/2 x 1/2 by chance


def _order(name: str) -> tuple:
    s = layout.stage_of(name) if "/" not in str(name) else None
    return (0, s, "") if s is not None else (1 if name == "integrated" else 2, 0, str(name))


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
        classes = {a: _attr_info(results, models, a, ("classes",)) for a in attrs}
        for leaf in SCORE_KEYS:
            # top-5 of 5 classes or fewer is 1.0 by construction: shown only where it can tell something
            cols = [a for a in attrs if leaf != "top5" or (classes[a] or 0) > 5]
            if not any(_score(results[m], g, a, leaf) is not None for m in models for a in cols):
                continue
            title = f"{_TITLES.get(g, g)} {leaf.replace('top', 'top-')}"
            n = {a: _attr_info(results, models, a, ("n", "n_test"), g) for a in cols}
            rows = [["chance"] + [_fmt(min(1.0, (5 if leaf == "top5" else 1) / classes[a])) if classes[a] else "–"
                                  for a in cols],
                    ["n"] + [str(n[a]) if n[a] else "–" for a in cols]]
            rows += [[m] + [_with_interval(_score(results[m], g, a, leaf), n[a]) for a in cols] for m in models]
            out.append(f"### {title}\n\n" + _table(["model"] + cols, rows) + "\n")
    return out


def _attr_info(results: dict, models: list[str], attr: str, keys: tuple, group: Optional[str] = None) -> Optional[int]:
    """A count of an attribute's evaluation (classes, n) from the first model and group that has it."""
    for m in models:
        for g in ([group] if group else _GROUPS):
            rec = (results[m].get(g) or {}).get(attr) if isinstance(results[m].get(g), dict) else None
            for k in keys:
                if isinstance(rec, dict) and isinstance(rec.get(k), int):
                    return rec[k]
    return None


def _with_interval(v: Optional[float], n: Optional[int]) -> str:
    """0.812 [0.78, 0.85]: the accuracy and its 95% Wilson interval over n samples."""
    ci = wilson(v, n) if v is not None and not math.isnan(v) and n else None
    return _fmt(v) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def versus(a: float, na: Optional[int], b: float, nb: Optional[int]) -> str:
    """"above" / "below" only where the 95% Wilson intervals separate, else "within noise"."""
    ia, ib = (wilson(a, na) if na else None), (wilson(b, nb) if nb else None)
    if ia is None or ib is None:
        return "no n"
    return "above" if ia[0] > ib[1] else "below" if ia[1] < ib[0] else "within noise"


def _summary(results: dict, models: list[str]) -> list[str]:
    """MMVP mean and linear probe of stage 0, each later model against it. No stage is picked as
    "best": the evaluation has a test split only, and a pick on it would over-read it."""
    later = [m for m in models if m != "stage_0"]
    mm = {m: results[m].get("mmvp") or {} for m in models}
    mm = {m: (r["mean"], r.get("pairs")) for m, r in mm.items() if isinstance(r.get("mean"), (int, float))}
    lines = []
    if "stage_0" in mm:
        b, nb = mm["stage_0"]
        parts = [f"{m} {_with_interval(v, n)} ({v - b:+.3f}, {versus(v, n, b, nb)})"
                 for m, (v, n) in mm.items() if m != "stage_0"]
        lines.append(f"- MMVP mean: stage_0 {_with_interval(b, nb)}" + "".join(f"; {p}" for p in parts))
    else:
        lines.append("- MMVP mean: no MMVP results for stage_0")
    attrs = sorted({a for m in models for a, v in (results[m].get("linear_probe") or {}).items() if isinstance(v, dict)})
    base = {a: _score(results.get("stage_0", {}), "linear_probe", a, "top1") for a in attrs}
    attrs = [a for a in attrs if base[a] is not None]
    if not attrs:
        return lines + ["- linear probe: no per-attribute results for stage_0"]
    n = {a: _attr_info(results, models, a, ("n_test", "n"), "linear_probe") for a in attrs}
    lines.append("- linear probe top-1 of stage_0: " + ", ".join(f"{a} {_with_interval(base[a], n[a])}" for a in attrs))
    for m in later:
        got = {a: _score(results[m], "linear_probe", a, "top1") for a in attrs}
        got = {a: v for a, v in got.items() if v is not None}
        if not got:
            lines.append(f"- {m}: no linear-probe results")
            continue
        verdict = {a: versus(v, n[a], base[a], n[a]) for a, v in got.items()}
        lines.append(f"- {m} vs stage_0: " + ", ".join(f"{a} {v - base[a]:+.3f} ({verdict[a]})" for a, v in got.items()))
        count = {k: sum(v == k for v in verdict.values()) for k in ("above", "below", "within noise")}
        lines.append(f"- {m} beats stage_0 on {count['above']} of {len(got)} probed attributes where the 95% "
                     f"intervals separate (below on {count['below']}, within noise on {count['within noise']})")
    return lines


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Markdown table(s) of at most MAX_COLUMNS columns; the first column repeats in each part."""
    parts = []
    for start in range(1, max(2, len(header)), MAX_COLUMNS - 1):
        cols = [0] + list(range(start, min(len(header), start + MAX_COLUMNS - 1)))
        lines = ["| " + " | ".join(header[c] for c in cols) + " |", "|" + "---|" * len(cols)]
        parts.append("\n".join(lines + ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]))
    return "\n\n".join(parts)


def _save(fig: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # the temp name has no .png suffix
    plt.close(fig)


def _with_data(series: dict) -> list:
    """The stages that have data, in stage order."""
    return sorted((s for s, v in series.items() if v), key=lambda s: _order(layout.stage_name(s)))


def _plot_by_stage(path: str, series: dict, draw: Callable[[Any, Any, Any], None], **axes: Any) -> bool:
    """One line per stage that has data, in stage order; False (and no file) when none has."""
    order = _with_data(series)
    if not order:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in order:
        draw(ax, s, series[s])
    ax.set(**axes)
    ax.legend()
    _save(fig, path)
    return True


def _plot_losses(path: str, curves: dict) -> bool:
    """One panel per stage: the label-masked losses of stages >= 1 (negatives only inside a label)
    are not comparable with stage 0's, nor across stages whose labels differ."""
    order = _with_data(curves)
    if not order:
        return False
    fig, axes = plt.subplots(1, len(order), figsize=(3.5 * len(order) + 1, 3.2), squeeze=False)
    for ax, s in zip(axes[0], order):
        steps, losses = zip(*[(p[0], p[1]) for p in curves[s]])
        ax.plot(steps, losses, marker="." if len(steps) < 50 else None)
        kind = "contrastive loss" if str(s) == "0" else "label-masked loss"
        ax.set(xlabel="step", title=f"stage {s}: {kind}")
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    _save(fig, path)
    return True


def _draw_sizes(ax: Any, s: Any, sizes: list) -> None:
    v = sorted(sizes, reverse=True)
    ax.plot(range(1, len(v) + 1), [max(x, 0.5) for x in v], marker=".", label=f"stage {s} (K={len(v)})")


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
        ns = [mmvp[m].get("pairs_per_category", {}).get(c) for c in cats] + [mmvp[m].get("pairs")]
        ax.bar(np.arange(len(labels)) + i * width - 0.4 + width / 2, vals, width, label=m,
               yerr=_error_bars(vals, ns), capsize=2)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    ax.set(ylabel="pair accuracy", ylim=(0, 1), title="MMVP-VLM pairs by stage")
    ax.legend()
    _save(fig, path)
    return True


def _error_bars(vals: list, ns: list) -> np.ndarray:
    """2 x len(vals): the distances from each value to its 95% Wilson bounds (0 where n is unknown)."""
    out = np.zeros((2, len(vals)))
    for j, (v, n) in enumerate(zip(vals, ns)):
        ci = wilson(v, n) if n and not math.isnan(v) else None
        if ci:
            out[:, j] = (v - ci[0], ci[1] - v)
    return out


def write_report(run_dir: str, results: dict, loss_curves: dict, cluster_sizes: dict, label_stats: dict,
                 recipe: Optional[dict] = None, timings: Optional[list] = None, data: Optional[dict] = None,
                 plots: Collection[str] = PLOTS) -> str:
    """Write report.md and its PNGs into `run_dir`; returns the report's path. `recipe` and `timings`
    come from mcl_dist/report/recipe.py, `data` (unusable samples) from mcl_dist/data/data_report.py.
    `plots`: the PNGs it may draw (the report step's plan, so it never writes a file its outputs()
    do not name); each is drawn only when it has data."""

    def draw(name: str, plot: Callable[[str, Any], bool], data_: Any) -> bool:
        return name in plots and plot(os.path.join(run_dir, name), data_)


    matplotlib.use("Agg")  # no display on cluster nodes
    results = {k: v for k, v in (results or {}).items() if isinstance(v, dict)}
    models = sorted(results, key=_order)
    md = [f"# MCL run report\n\nRun directory: `{os.path.abspath(run_dir)}`\n"]
    if recipe:
        md += ["## Recipe\n", "\n".join(recipe["lines"]) + "\n", _table(recipe["header"], recipe["rows"]) + "\n"]
    if timings:
        md += ["## Wall time and throughput\n", _table(["step", "wall time", "samples/s"], timings) + "\n",
               "A resumed step counts its last attempt only.\n"]
    md.append("## Summary\n")
    md.append("\n".join(_summary(results, models)) + "\n" if models else "No evaluation results.\n")
    md.append("## Evaluation\n")
    tables = _metric_tables(results, models)
    if tables:
        md += tables
        md.append("Accuracies are fractions (1.0 = all correct) with their 95% Wilson interval over n test "
                  "samples (the summary says \"above\" or \"beats\" only where two such intervals separate); "
                  "chance is 1/classes (top-5: 5/classes, shown only where there are more than 5 classes). MMVP counts a pair only if both statements pick their own image.\n")
    else:
        md.append("No evaluation results (evaluation disabled or not run).\n")

    mmvp = {m: results[m]["mmvp"] for m in models if isinstance(results[m].get("mmvp"), dict) and results[m]["mmvp"]}
    md.append("## MMVP-VLM pairs\n")
    if mmvp:
        cats = sorted({c for r in mmvp.values() for c in r.get("per_category", {})})
        n = {c: next((r["pairs_per_category"][c] for r in mmvp.values() if c in r.get("pairs_per_category", {})), None)
             for c in cats}
        total = next((r.get("pairs") for r in mmvp.values() if r.get("pairs")), None)
        rows = [["chance"] + [_fmt(MMVP_CHANCE)] * (len(cats) + 1),
                ["n (pairs)"] + [str(n[c]) if n[c] else "–" for c in cats] + [str(total) if total else "–"]]
        rows += [[m] + [_with_interval(mmvp[m].get("per_category", {}).get(c), n[c]) for c in cats] +
                 [_with_interval(mmvp[m].get("mean"), total)] for m in mmvp]
        md.append(_table(["model"] + cats + ["**mean**"], rows) + "\n")
        if n and min(v for v in n.values() if v) < 100:
            md.append(f"With {min(v for v in n.values() if v)} pairs in a category one pair moves its accuracy by "
                      f"{1 / min(v for v in n.values() if v):.3f}: read the intervals before the differences.\n")
        if draw(layout.MMVP_PLOT, _plot_mmvp, mmvp):
            md.append(f"![MMVP by stage]({layout.MMVP_PLOT})\n")
    else:
        md.append("No MMVP results (no MMVP-VLM folder was given, or evaluation was not run).\n")

    notes = [(m, n) for m in models for n in results[m].get("notes", [])]
    if notes:
        md.append("## Skipped evaluations\n")
        md += [f"- {m}: {n}" for m, n in notes] + [""]

    md.append("## Training loss\n")
    if draw(layout.LOSS_PLOT, _plot_losses, loss_curves or {}):
        md.append(f"![loss curves]({layout.LOSS_PLOT})\n")
        md.append("One panel per stage: stages >= 1 train a label-masked loss (negatives only inside a "
                  "pseudo-label), so their values are not comparable with stage 0's or with each other's.\n")
    else:
        md.append("No loss curves recorded.\n")

    md.append("## Clusters and pseudo-labels\n")
    if draw(layout.CLUSTER_PLOT, _plot_clusters, cluster_sizes or {}):
        md.append(f"![cluster sizes]({layout.CLUSTER_PLOT})\n")
    else:
        md.append("No k-means cluster sizes recorded (single-stage run, or clustering not run).\n")
    stats = {s: v for s, v in (label_stats or {}).items() if isinstance(v, dict) and v}
    if stats:
        # one row per statistic, one column per stage: the other way round was 17 columns wide
        keys = sorted({k for v in stats.values() for k, x in v.items() if _scalar(x)})
        order = sorted(stats, key=lambda s: _order(layout.stage_name(s)))
        rows = [[k] + [_cell(stats[s].get(k)) for s in order] for k in keys]
        md.append(_table(["statistic"] + [f"stage {s}" for s in order], rows) + "\n")
    else:
        md.append("No pseudo-label statistics recorded.\n")

    md.append("## Unusable samples\n")
    md += data_report.lines(data or {})
    path = layout.report_path(run_dir)
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
