"""Tables, charts and summary lines of the feature-suppression benchmark
(tools/bench_feature_suppression.py collects the runs; this module only formats them).

`res["summary"][arm][model][attribute][metric]` is a list over seeds; metrics are `pairs`,
`zero_shot`, `probe` (CLIP) or `probe`, `knn` (SimCLR). `res["stages"][arm][stage]` holds, per
seed, the stopping signal, the label purity and the loss at the start and end of the stage.
"""
from __future__ import annotations

import os

import numpy as np

# Measured on the validation split with the tiny-vit-p4 tower at T = 2,000 (docs/results.md): the
# baseline learns colour, background and frame (pairs 1.00) and texture (1.00), and suppresses
# shape (0.34) and position (0.06), which the same tower learns when the easy attributes are held
# constant. So position counts as a hard attribute here, and the ratio line is over SUPPRESSED.
EASY = ["color", "background", "frame"]
HARD = ["shape", "texture", "position"]  # varied in the reference (no-easy) data
SUPPRESSED = ["shape", "position"]  # hard attributes the baseline fails on the validation split
SIMCLR_HARD = ["shape", "texture"]  # the SimCLR arm's (docs/results.md): position is easy for its ResNet
ATTRS = ["color", "shape", "texture", "position", "background", "frame"]


def ms(v) -> str:
    v = np.asarray(v, float)
    return f"{v.mean():.2f}±{v.std():.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def mean(v) -> float:
    return float(np.mean(v)) if len(v) else float("nan")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def stage_models(models) -> list[str]:
    return sorted((m for m in models if m.startswith("stage_")), key=lambda m: int(m.split("_")[1]))


# -- CLIP ------------------------------------------------------------------------------------
def clip_tables(res: dict, arms: list[str]) -> list[str]:
    S = res["summary"]
    arms = [a for a in arms if a in S]
    out = ["## Integrated model of each arm (pair / zero-shot / linear probe)", ""]
    rows = []
    for arm in arms:
        cells = []
        for a in ATTRS:
            m = S[arm]["integrated"].get(a)
            cells.append("—" if m is None else f"{ms(m['pairs'])} / {ms(m['zero_shot'])} / {ms(m['probe'])}")
        rows.append([f"{arm} (n={len(next(iter(S[arm]['integrated'].values()))['pairs'])})"] + cells)
    out += _table(["arm"] + ATTRS, rows)
    for metric, title in (("pairs", "MMVP-style pair accuracy"), ("zero_shot", "zero-shot accuracy"),
                          ("probe", "linear-probe accuracy")):
        out += ["", f"## Every model (stage and integrated), {title}", ""]
        rows = [[arm, model] + [ms(S[arm][model][a][metric]) if a in S[arm][model] else "—" for a in ATTRS]
                for arm in arms for model in stage_models(S[arm]) + ["integrated"]]
        out += _table(["arm", "model"] + ATTRS, rows)
    return out


def dilution_table(res: dict, arms: list[str]) -> list[str]:
    """Integrated model vs its best single stage, per attribute (pair accuracy, means over seeds)."""
    S = res["summary"]
    rows = []
    for arm in [a for a in arms if a in S and len(stage_models(S[a])) > 1]:
        cells = []
        for a in ATTRS:
            if a not in S[arm]["integrated"]:
                cells.append("—")
                continue
            best = max(stage_models(S[arm]), key=lambda m: mean(S[arm][m][a]["pairs"]))
            integ, single = mean(S[arm]["integrated"][a]["pairs"]), mean(S[arm][best][a]["pairs"])
            cells.append(f"{integ:.2f} vs {single:.2f} ({best.split('_')[1]})")
        rows.append([arm] + cells)
    if not rows:
        return []
    return (["## Integration: integrated vs best single stage (pair accuracy; stage in brackets)", ""]
            + _table(["arm"] + ATTRS, rows))


def purity_table(res: dict, k_of: dict) -> list[str]:
    P, st = res["purity"], res["label_stats"]
    rows = []
    for arm in P:
        for s in sorted(P[arm]):
            for src in ("clusters", "labels"):
                sizes = st.get(arm, {}).get(s, [{}])
                size = (f"{mean([x.get('num_labels', 0) for x in sizes]):.0f} "
                        f"({mean([x.get('median_size', 0) for x in sizes]):.0f})" if src == "labels" else str(k_of[arm]))
                rows.append([arm, str(s), "k-means clusters" if src == "clusters" else "pseudo-labels", size]
                            + [ms(P[arm][s][src][a]) for a in ATTRS])
    if not rows:
        return []
    return (["## Cluster purity (size-weighted majority share per attribute; chance ≈ 1/#values)", ""]
            + _table(["arm", "stage", "grouping", "#groups (median size)"] + ATTRS, rows))


def signal_table(res: dict) -> list[str]:
    """Per stage of every MCL arm: the label-free stopping signal next to what it should predict."""
    rows = []
    for arm, stages in res.get("stages", {}).items():
        for s in sorted(stages):
            d = stages[s]
            if "nmi" not in d:
                continue
            easy_min = [min(p[a] for a in EASY) for p in d["label_purity"]]
            rows.append([arm, str(s), ms(d["nmi"]), ms(d["split_labels"]), ms(d["split_samples"]),
                         f"{mean(d['labels_before']):.0f} → {mean(d['labels_after']):.0f}",
                         ms(easy_min), ms(d["loss_start"]), ms(d["loss_end"]), ms(d["hard_pairs"])])
    if not rows:
        return []
    return (["## Stopping signal per stage (label-free) and what it should predict", "",
             "nmi / split: the new k-means clusters (on stage s-1's embeddings) vs the labels stage s-1 "
             "trained with; easy purity: the smallest purity of stage s's pseudo-labels over the easy "
             "attributes (< 0.95: an easy attribute is still left to learn, so another stage should help); "
             "loss: stage s's masked loss at its first and last step; hard pairs: stage s's own model.", ""]
            + _table(["arm", "stage", "NMI(new, current)", "labels split", "samples in split labels",
                      "labels before → after", "easy purity (min)", "loss start", "loss end",
                      "hard pairs, stage model"], rows))


def err_ratio(mcl: dict, base: dict) -> tuple[float, float]:
    """(pair error ratio on the suppressed attributes, easy pair accuracy) of two integrated summaries."""
    hard_m = mean([mean(mcl[a]["pairs"]) for a in SUPPRESSED])
    hard_b = mean([mean(base[a]["pairs"]) for a in SUPPRESSED])
    easy = mean([mean(mcl[a]["pairs"]) for a in EASY])
    return ((1 - hard_m) / (1 - hard_b) if hard_b < 1 else float("inf")), easy


def seed_lines(res: dict, headline: str, k_of: dict, seed: int = 0) -> list[str]:
    """One seed of the K sweep (the headline arm and its `_kK` variants) and of the no-cluster
    controls, each against the baseline's mean over its seeds."""
    S, seeds, base = res["summary"], res.get("seeds", {}), res["summary"]["baseline"]["integrated"]
    n_base = len(base[SUPPRESSED[0]]["pairs"])

    def line(arm: str, label: str) -> str:
        i = seeds[arm].index(seed)
        one = {a: {"pairs": [S[arm]["integrated"][a]["pairs"][i]]} for a in SUPPRESSED + EASY}
        err, easy = err_ratio(one, base)
        hard = ", ".join(f"{a} {one[a]['pairs'][0]:.2f}" for a in SUPPRESSED)
        return f"  {label}: pair error ratio {err:.2f} ({hard}), easy attribute {100 * easy:.1f}%"

    have = lambda arm: arm in S and seed in seeds.get(arm, [])
    sweep = sorted((a for a in S if a == headline or a.startswith(headline + "_k")), key=lambda a: k_of.get(a, 0))
    controls = sorted(a for a in S if a.endswith("noclust"))
    lines = []
    if len([a for a in sweep if have(a)]) > 1:
        lines.append(f"K sweep, {headline}, seed {seed} (against the {n_base}-seed baseline):")
        lines += [line(a, f"K {k_of.get(a, '?')}") for a in sweep if have(a)]
    if any(have(a) for a in controls):
        lines.append(f"no-cluster controls (restarts only), seed {seed}:")
        lines += [line(a, a) for a in controls if have(a)]
    return lines


def final_lines(res: dict, headline: str, k_of: dict) -> list[str]:
    """The fair-baseline check, the error ratio of every stage count, one seed of the K sweep and
    the controls, and the headline line."""
    S = res["summary"]
    if "baseline" not in S:
        return ["(the summary lines need the baseline arm)"]
    base = S["baseline"]["integrated"]
    per = {a: mean(base[a]["pairs"]) for a in EASY}
    lines = [f"baseline easy-attribute pair accuracy: min {min(per.values()):.2f} ("
             + ", ".join(f"{a} {v:.2f}" for a, v in per.items()) + ")"]
    ranked = []
    for arm in sorted(S):
        if arm.startswith("mcl") and "_k" not in arm and not arm.endswith("noclust"):
            n = len(S[arm]["integrated"]["shape"]["pairs"])
            err, easy = err_ratio(S[arm]["integrated"], base)
            ranked.append((err, arm, easy, n))
    for err, arm, easy, n in sorted(ranked):
        lines.append(f"  {arm} ({n} seeds): pair error ratio {err:.2f}, easy attribute {100 * easy:.1f}%")
    lines += seed_lines(res, headline, k_of)
    if headline in S:
        err, easy = err_ratio(S[headline]["integrated"], base)
        lines.append(f"pair error ratio (integrated MCL / baseline) on suppressed attributes: {err:.2f}; "
                     f"easy attribute: {100 * easy:.1f}%   [{headline}, chosen before the test run]")
    return lines


def clip_charts(res: dict, out: str, arms: list[str], headline: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S, paths = res["summary"], []
    shown = [a for a in arms if a in S]
    for metric, title in (("pairs", "MMVP-style pair accuracy"), ("zero_shot", "zero-shot accuracy"),
                          ("probe", "linear-probe accuracy")):
        fig, ax = plt.subplots(figsize=(11, 4))
        w, x = 0.85 / max(len(shown), 1), np.arange(len(ATTRS))
        for i, arm in enumerate(shown):
            vals = [S[arm]["integrated"].get(a, {}).get(metric) for a in ATTRS]
            ax.bar(x + (i - (len(shown) - 1) / 2) * w, [np.mean(v) if v else np.nan for v in vals], w,
                   yerr=[np.std(v) if v else 0 for v in vals], capsize=2,
                   label=arm + (" (no easy attributes)" if arm == "reference" else ""))
        ax.set_xticks(x, [a + (" (hard)" if a in HARD else "") for a in ATTRS])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(title)
        ax.set_title(f"{title}, integrated model of each arm (mean ± std over seeds)")
        ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        paths.append(os.path.join(out, f"{metric}.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if headline in S and "baseline" in S:
        models = stage_models(S[headline]) + ["integrated"]
        fig, ax = plt.subplots(figsize=(11, 4))
        bars = [("baseline", "integrated")] + [(headline, m) for m in models]
        w, x = 0.85 / len(bars), np.arange(len(ATTRS))
        for i, (arm, model) in enumerate(bars):
            ax.bar(x + (i - (len(bars) - 1) / 2) * w, [np.mean(S[arm][model][a]["pairs"]) for a in ATTRS], w,
                   label="baseline" if arm == "baseline" else f"{arm} {model}")
        ax.set_xticks(x, ATTRS)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"MMVP-style pair accuracy per stage, {headline}")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        paths.append(os.path.join(out, "pairs_per_stage.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# -- SimCLR (unimodal) -----------------------------------------------------------------------
def simclr_tables(res: dict, arms: list[str]) -> list[str]:
    S = res["summary"]
    out = []
    for metric, title in (("probe", "linear-probe accuracy"), ("knn", "k-NN accuracy (k = 20)")):
        rows = [[arm, model] + [ms(S[arm][model][a][metric]) if a in S[arm][model] else "—" for a in ATTRS]
                for arm in arms if arm in S for model in stage_models(S[arm]) + ["integrated"]]
        out += [f"## Every model (stage and integrated), {title}", ""] + _table(["arm", "model"] + ATTRS, rows) + [""]
    return out


def simclr_chart(res: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = res["summary"]
    bars = [(a, "integrated") for a in ("simclr_baseline", "simclr_mcl2", "simclr_mcl3", "simclr_mcl3_noclust") if a in S]
    bars += [("simclr_mcl3", m) for m in stage_models(S.get("simclr_mcl3", {}))]
    bars += [("simclr_reference", "integrated")] if "simclr_reference" in S else []
    fig, ax = plt.subplots(figsize=(11, 4))
    w, x = 0.85 / max(len(bars), 1), np.arange(len(ATTRS))
    for i, (arm, model) in enumerate(bars):
        vals = [S[arm][model].get(a, {}).get("probe") for a in ATTRS]
        ax.bar(x + (i - (len(bars) - 1) / 2) * w, [np.mean(v) if v else np.nan for v in vals], w,
               yerr=[np.std(v) if v else 0 for v in vals], capsize=2,
               label=arm.replace("simclr_", "") + ("" if model == "integrated" else f" {model}"))
    ax.set_xticks(x, [a + (" (hard)" if a in HARD else "") for a in ATTRS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear-probe accuracy")
    ax.set_title("SimCLR: linear-probe accuracy per attribute (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    path = os.path.join(out, "simclr_probe.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def simclr_final_line(res: dict) -> list[str]:
    S = res["summary"]
    if "simclr_mcl3" not in S or "simclr_baseline" not in S:
        return ["(the final line needs the simclr_baseline and simclr_mcl3 arms)"]
    mcl, base = S["simclr_mcl3"]["integrated"], S["simclr_baseline"]["integrated"]
    gain = 100 * mean([mean(mcl[a]["probe"]) - mean(base[a]["probe"]) for a in SIMCLR_HARD])
    return [f"linear-probe gain (integrated MCL - baseline) on suppressed attributes: {gain:.1f} points; "
            f"easy attribute: {100 * mean(mcl['color']['probe']):.1f}%"]
