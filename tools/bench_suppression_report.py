"""Tables, charts and summary lines of the feature-suppression benchmark
(tools/bench_feature_suppression.py collects the runs; this module only formats them).

`res["summary"][arm][model][attribute][metric]` is a list over seeds; metrics are `pairs`,
`zero_shot`, `probe` (CLIP) or `probe`, `knn` (SimCLR). `res["stages"][arm][stage]` holds, per
seed, the stopping signal, the label purity and the loss at the start and end of the stage.
"""
from __future__ import annotations

import os

import numpy as np

from bench_suppression_arms import base_arm  # an integration arm (_icka_*) shares its trained arm's stages
from bench_suppression_families import FAMILY_ATTRS

SIMCLR_HARD = ["shape", "texture"]  # the SimCLR arm's (family A; docs/results.md): position is easy for its ResNet


def use_family(family: str) -> None:
    """Point the module's attribute lists (read by every table below) at one family."""
    global ATTRS, EASY, HARD, SUPPRESSED
    fa = FAMILY_ATTRS[family]
    ATTRS, EASY, HARD, SUPPRESSED = fa["attrs"], fa["easy"], fa["hard"], fa["suppressed"]


use_family("A")


def ms(v) -> str:
    """One value, or the mean followed by every seed's value (never a mean alone)."""
    v = np.asarray(v, float)
    return f"{v.mean():.2f} [" + " ".join(f"{x:.2f}" for x in v) + "]" if len(v) > 1 else f"{v.mean():.2f}"


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
                for arm in arms for model in ([] if base_arm(arm) else stage_models(S[arm])) + ["integrated"]]
        out += _table(["arm", "model"] + ATTRS, rows)
    return out


def dilution_table(res: dict, arms: list[str]) -> list[str]:
    """Integrated model vs its best single stage, per attribute: means over seeds, and the largest
    per-seed shortfall (the best stage is picked per seed, after the fact: an upper bound that no
    label-free integration can know in advance)."""
    S = res["summary"]
    rows = []
    for arm in [a for a in arms if a in S and len(stage_models(S[a])) > 1]:
        cells = []
        for a in ATTRS:
            if a not in S[arm]["integrated"]:
                cells.append("—")
                continue
            integ = S[arm]["integrated"][a]["pairs"]
            best = [max(S[arm][m][a]["pairs"][i] for m in stage_models(S[arm])) for i in range(len(integ))]
            short = max((b - v, sd) for b, v, sd in zip(best, integ, res["seeds"][arm]))
            cells.append(f"{mean(integ):.2f} vs {mean(best):.2f}, "
                         + (f"short {short[0]:.2f} on seed {short[1]}" if short[0] > 1e-9 else "≥ on every seed"))
        rows.append([arm] + cells)
    if not rows:
        return []
    return (["## Integration: integrated vs best single stage (pair accuracy; the best stage per seed)", ""]
            + _table(["arm"] + ATTRS, rows))


def chosen_k(res: dict, arm: str, s, k_of: dict) -> str:
    """A stage's K: the arm's fixed one, or what `k: auto` chose on each seed."""
    if k_of.get(arm) != "auto":
        return str(k_of.get(arm, "?"))
    ks = res.get("stages", {}).get(arm, {}).get(s, {}).get("k", [])
    return "auto: " + " ".join(str(k) for k in ks)


def purity_table(res: dict, k_of: dict) -> list[str]:
    P, st = res["purity"], res["label_stats"]
    rows = []
    for arm in [a for a in P if not base_arm(a)]:
        for s in sorted(P[arm]):
            for src in ("clusters", "labels"):
                sizes = st.get(arm, {}).get(s, [{}])
                size = (f"{mean([x.get('num_labels', 0) for x in sizes]):.0f} "
                        f"({mean([x.get('median_size', 0) for x in sizes]):.0f})" if src == "labels" else chosen_k(res, arm, s, k_of))
                rows.append([arm, str(s), "k-means clusters" if src == "clusters" else "pseudo-labels", size]
                            + [ms(P[arm][s][src][a]) for a in ATTRS])
    if not rows:
        return []
    return (["## Cluster purity (size-weighted majority share per attribute; chance ≈ 1/#values)", ""]
            + _table(["arm", "stage", "grouping", "#groups (median size)"] + ATTRS, rows))


def signal_table(res: dict) -> list[str]:
    """Per stage of every MCL arm: the label-free stop signals next to what they should predict."""
    rows = []
    for arm, stages in res.get("stages", {}).items():
        if base_arm(arm):  # its stages are its trained arm's rows
            continue
        for s in sorted(stages, key=int):
            d = stages[s]
            if "nmi" not in d:
                continue
            easy_min = [min(p[a] for a in EASY) for p in d["label_purity"]]
            # "—" where a signal predates the run or has no value here (SimCLR has no pairs: NaN)
            opt = lambda key: (ms(d[key]) if key in d and None not in d[key]  # noqa: E731
                               and not np.isnan(np.asarray(d[key], float)).all() else "—")
            rows.append([arm, str(s), ms(d["nmi"]), ms(d["split_samples"]), opt("survived_samples"), opt("cka_prev"),
                         f"{mean(d['labels_before']):.0f} → {mean(d['labels_after']):.0f}",
                         ms(easy_min), ms(d["loss_start"]), ms(d["loss_end"]), opt("hard_pairs")])
    if not rows:
        return []
    return (["## Stop signals per stage (label-free) and what they should predict", "",
             "nmi / split: the new k-means clusters (on stage s-1's embeddings) vs the labels stage s-1 "
             "trained with; survived: share of samples whose (label, cluster) combination keeps min_label_size; "
             "CKA(s-1, earlier): linear CKA of stage s-1's features with stages 0..s-2's (near 1: it learned "
             "nothing new); easy purity: the smallest purity of stage s's pseudo-labels over the easy attributes; "
             "loss: stage s's masked loss at its first and last step; hard pairs: stage s's own model.", ""]
            + _table(["arm", "stage", "NMI(new, current)", "samples in split labels", "survived samples",
                      "CKA(s-1, earlier)", "labels before → after", "easy purity (min)", "loss start", "loss end",
                      "hard pairs, stage model"], rows))


def seed_pairs(res: dict, arm: str, model: str = "integrated", metric: str = "pairs") -> dict:
    """{seed: {attribute: pair accuracy}} of one arm's model (or another metric: SimCLR's probe)."""
    S = res["summary"][arm][model]
    return {sd: {a: S[a][metric][i] for a in S} for i, sd in enumerate(res["seeds"][arm])}


def ratio(mcl: dict, base: dict) -> float:
    """Pair error ratio on the suppressed attributes of one seed's {attribute: pairs}."""
    hard_m, hard_b = mean([mcl[a] for a in SUPPRESSED]), mean([base[a] for a in SUPPRESSED])
    return (1 - hard_m) / (1 - hard_b) if hard_b < 1 else float("inf")


def seed_ratios(res: dict, arm: str) -> dict:
    """{seed: pair error ratio against the same seed's baseline} for the seeds both have."""
    if arm not in res["summary"] or "baseline" not in res["summary"]:
        return {}
    base, mine = seed_pairs(res, "baseline"), seed_pairs(res, arm)
    return {sd: ratio(mine[sd], base[sd]) for sd in mine if sd in base}


def seed_table(res: dict, arms: list[str]) -> list[str]:
    """One row per arm of what the issue asks per seed: the integrated model's pair error ratio
    against the same seed's baseline, the pairs of each suppressed attribute, the easy minimum."""
    S = res["summary"]
    rows = []
    for arm in [a for a in arms if a in S] + [a for a in S if a not in arms]:
        if "integrated" not in S[arm] or arm.endswith("reference"):
            continue
        per = seed_pairs(res, arm)
        r = seed_ratios(res, arm)
        rows.append([arm, " ".join(map(str, per)), "—" if arm == "baseline" else
                     " ".join(f"{r[sd]:.2f}" if sd in r else "—" for sd in per)]
                    + [" ".join(f"{v[a]:.2f}" for v in per.values()) for a in SUPPRESSED]
                    + [" ".join(f"{min(v[a] for a in EASY):.2f}" for v in per.values())])
    if not rows:
        return []
    return (["## Per seed: the integrated model against the same seed's baseline", ""]
            + _table(["arm", "seeds", "pair error ratio per seed"] + [f"{a} pairs per seed" for a in SUPPRESSED]
                     + ["easy min per seed"], rows) + [""])


def fmt_seeds(values: dict) -> str:
    return " ".join(f"{v:.2f}" for v in values.values()) + f"  (seeds {' '.join(str(s) for s in values)})"


def final_lines(res: dict, headline: str, k_of: dict) -> list[str]:
    """The fair-baseline check, then every MCL arm's pair error ratio per seed against the same
    seed's baseline (sorted by their mean), the easy attributes per seed, and the headline arm."""
    S = res["summary"]
    if "baseline" not in S:
        return ["(the summary lines need the baseline arm)"]
    base = seed_pairs(res, "baseline")
    lines = ["baseline easy-attribute pair accuracy per seed: "
             + "; ".join(f"seed {sd} min {min(v[a] for a in EASY):.2f}" for sd, v in base.items())]
    ranked = sorted((mean(list(r.values())), arm, r) for arm in S if arm.startswith("mcl") and (r := seed_ratios(res, arm)))
    for _, arm, r in ranked:
        easy = {sd: min(v[a] for a in EASY) for sd, v in seed_pairs(res, arm).items()}
        lines.append(f"  {arm} (K {k_of.get(arm, '?')}): pair error ratio per seed {fmt_seeds(r)}; "
                     f"easy attribute min per seed " + " ".join(f"{v:.2f}" for v in easy.values()))
    if seed_ratios(res, headline):
        lines.append(f"pair error ratio (integrated MCL / same-seed baseline) on suppressed attributes per seed: "
                     f"{fmt_seeds(seed_ratios(res, headline))}   [{headline}, chosen before the test run]")
    return lines


def choose_recipe(res: dict, prefix: str = "mcl") -> tuple[str, float]:
    """The MCL arm named `prefix...` (not a no-cluster control) with the lowest mean of its per-seed
    ratios, among the arms that have every seed the baseline has: the recipe one family picks for
    the other."""
    seeds = set(res.get("seeds", {}).get("baseline", []))
    cands = [(mean(list(r.values())), arm) for arm in res["summary"]
             if arm.startswith(prefix) and "noclust" not in arm and set(r := seed_ratios(res, arm)) == seeds and seeds]
    return (min(cands)[1], min(cands)[0]) if cands else ("", float("nan"))


def transfer_lines(results: dict, prefix: str = "mcl") -> list[str]:
    """One line per direction in the issue's form, each followed by what was chosen and where;
    `results` is {"A": summary, "B": summary} (either may be missing); the recipe is chosen among
    the arms named `prefix...` (the tool passes its recipe grid's)."""
    lines = []
    for src, dst in (("A", "B"), ("B", "A")):
        head = f"transfer (recipe chosen on {src}, tested on {dst}): pair error ratio per seed"
        if src not in results or dst not in results:
            lines.append(f"{head} — not measured: family {src if src not in results else dst} has no results yet")
            continue
        use_family(src)
        arm, chosen_mean = choose_recipe(results[src], prefix)
        use_family(dst)
        r = seed_ratios(results[dst], arm) if arm else {}
        if not r:
            lines.append(f"{head} — not measured: " + (f"run {arm} (and baseline) on {dst}" if arm else
                                                     f"no MCL arm has every seed of the baseline on {src}"))
            continue
        lines += [f"{head} {' '.join(f'{v:.2f}' for v in r.values())}",
                  f"  recipe {arm}: chosen on {src} (mean of its per-seed ratios {chosen_mean:.2f}); "
                  f"on {dst} against the same seed's baseline, seeds {' '.join(map(str, r))}"]
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
    bars = [(a, "integrated") for a in ("simclr_baseline", "simclr_mcl2", "simclr_mcl3", "simclr_mcl3_noclust",
                                        "simclr_mcl3_randlab") if a in S]
    bars += [("simclr_mcl3", m) for m in stage_models(S.get("simclr_mcl3", {}))]
    bars += [("simclr_reference", "integrated")] if "simclr_reference" in S else []
    fig, ax = plt.subplots(figsize=(11, 4))
    w, x = 0.85 / max(len(bars), 1), np.arange(len(ATTRS))
    for i, (arm, model) in enumerate(bars):
        vals = [S[arm][model].get(a, {}).get("probe") for a in ATTRS]
        ax.bar(x + (i - (len(bars) - 1) / 2) * w, [np.mean(v) if v else np.nan for v in vals], w,
               yerr=[np.std(v) if v else 0 for v in vals], capsize=2,
               label=arm.replace("simclr_", "") + ("" if model == "integrated" else f" {model}"))
    ax.set_xticks(x, [a + (" (suppressed)" if a in SIMCLR_HARD else "") for a in ATTRS])
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
    """The linear-probe gain on the suppressed attributes of integrated MCL (and of its no-cluster
    control) over the same seed's baseline: the mean, then every seed's value."""
    S = res["summary"]
    if "simclr_mcl3" not in S or "simclr_baseline" not in S:
        return ["(the final line needs the simclr_baseline and simclr_mcl3 arms)"]
    base = seed_pairs(res, "simclr_baseline", metric="probe")

    def gains(arm: str) -> dict:  # {seed: points}, the seeds both arms have
        return {sd: 100 * mean([v[a] - base[sd][a] for a in SIMCLR_HARD])
                for sd, v in seed_pairs(res, arm, metric="probe").items() if sd in base}

    def pts(v: float) -> str:
        return f"{round(v, 1) + 0.0:.1f}"  # + 0.0: never "-0.0"

    def line(arm: str, what: str) -> str:
        g = gains(arm)
        return (f"linear-probe gain ({what} - baseline) on suppressed attributes: {pts(mean(list(g.values())))} "
                f"points, per seed {' '.join(pts(v) for v in g.values())} (seeds {' '.join(map(str, g))})")

    mcl = S["simclr_mcl3"]["integrated"]
    out = [line("simclr_mcl3", "integrated MCL") + f"; easy attribute: {100 * mean(mcl['color']['probe']):.1f}%"]
    out += [line("simclr_mcl3_noclust", "no-cluster control")] if "simclr_mcl3_noclust" in S else []
    return out + ([line("simclr_mcl3_randlab", "random-label control")] if "simclr_mcl3_randlab" in S else [])
