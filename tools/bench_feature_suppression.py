#!/usr/bin/env python
"""Feature-suppression benchmark: does MCL undo what a single-stage CLIP suppresses?

Every arm is a real pipeline run (launch/pretrain.py; one process per run by default, or
torchrun with --nproc) on the same synthetic data (mcl_dist.synthetic, 1,200 easy combinations;
easy = color, position, background, frame; hard = shape, texture) and the same seeds:

    reference    single stage, T steps, on the SAME data with the easy attributes held constant
                 (SyntheticSpec.no_easy): how well this model learns the hard attributes unsuppressed
    baseline     single stage, T steps                                                     (a)
    mcl2_prev    2 stages of T/2 steps, each initialised from the previous stage             (b)
    mcl3_prev    3 stages of T/3 steps, init=previous                                        (c)
    mcl3_base    3 stages of T/3 steps, init=base (stage 0's initial weights)                (d)
    mcl3_noclust 3 stages of T/3 steps, init=previous, NO clusters                          (e)
                 (cluster.min_label_size larger than the data: every k-means cluster is "too
                 small", so every sample falls back to the root label; the sampler and the
                 masked loss then equal plain CLIP training: only the restarts remain)

Reported per arm, per model (each stage and the integrated one), per attribute: linear-probe,
zero-shot and MMVP-style pair accuracy, mean and spread over seeds; cluster purity of every MCL
stage (mcl_dist.inspect). Writes <out>/results.md, <out>/summary.json and PNG charts, and ends
with the two ratio lines (3-stage previous-init MCL vs baseline).

    python tools/bench_feature_suppression.py                      # CPU defaults (< 30 min, 2 cores)
    python tools/bench_feature_suppression.py --scale gpu          # larger data, T=3000, on a GPU
    python tools/bench_feature_suppression.py --split val          # settings are chosen on val only

Unimodal arm (--objective simclr; configs/bench_simclr.yaml): the same data, images only (the SimCLR
objective ignores captions), colour jitter and grayscale OFF so colour stays the easy feature, a
small torchvision ResNet, AdamW; no text, so linear probe and k-NN per attribute only:

    simclr_reference  single stage, T steps, on the no-easy data (is the suppression real?)
    simclr_baseline   single-stage SimCLR, T steps
    simclr_mcl2       2 stages of T/2 steps, init=previous
    simclr_mcl3       3 stages of T/3 steps, init=previous
    simclr_mcl3_noclust  the same 3 stages with no clusters (only the restarts and the concatenation)

    python tools/bench_feature_suppression.py --objective simclr   # only the SimCLR arms
    (writes <out>/results.md etc. under runs/bench_simclr_<scale>_<split>; ends with the
    linear-probe gain line)

Re-running resumes: finished runs (eval/results.json present) are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EASY = ["color", "position", "background", "frame"]
HARD = ["shape", "texture"]
ATTRS = ["color", "shape", "texture", "position", "background", "frame"]
ARMS = ["reference", "baseline", "mcl2_prev", "mcl3_prev", "mcl3_base", "mcl3_noclust"]
SIMCLR_ARMS = ["simclr_reference", "simclr_baseline", "simclr_mcl2", "simclr_mcl3", "simclr_mcl3_noclust"]
SIMCLR_AS = {"simclr_reference": "reference", "simclr_baseline": "baseline", "simclr_mcl2": "mcl2_prev",
             "simclr_mcl3": "mcl3_prev", "simclr_mcl3_noclust": "mcl3_noclust"}  # same stage lists as these CLIP arms

SCALES = {  # data size, total steps T, batch, K / group size per stage, concurrent runs, threads each
    "cpu": dict(n_train=8192, n_eval=1024, mmvp_pairs=50, steps=240, batch=128, k=32, group=16, jobs=2,
                threads=1, workers=1, probe=1000, device_note="2 CPU cores"),
    "gpu": dict(n_train=65536, n_eval=2048, mmvp_pairs=100, steps=3000, batch=128, k=32, group=16, jobs=1,
                threads=8, workers=4, probe=8000, device_note="1 GPU"),
}


# -- data ----------------------------------------------------------------------------------
def make_data(root: str, sc: dict) -> dict:
    """main/ and no_easy/ data sets, each: train, test and val shards, MMVP test + val folders."""
    from mcl_dist.synthetic import SyntheticSpec, shard_pattern, write_mmvp_pairs, write_shards, write_zero_shot_sets

    out = {}
    for name, spec in (("main", SyntheticSpec()), ("no_easy", SyntheticSpec(no_easy=True))):
        d = os.path.join(root, name)
        per = 1024
        train = write_shards(d, n_samples=sc["n_train"], samples_per_shard=per, seed=0, spec=spec, prefix="train",
                             progress=False)
        test = write_shards(d, n_samples=sc["n_eval"], samples_per_shard=per, seed=0, spec=spec, prefix="test",
                            progress=False)
        val = write_shards(d, n_samples=sc["n_eval"], samples_per_shard=per, seed=1, spec=spec, prefix="val",
                           progress=False)
        out[name] = {"train": shard_pattern(train), "test": shard_pattern(test), "val": shard_pattern(val),
                     "mmvp_test": write_mmvp_pairs(os.path.join(d, "mmvp"), spec=spec,
                                                   n_pairs_per_attribute=sc["mmvp_pairs"], seed=0),
                     "mmvp_val": write_mmvp_pairs(os.path.join(d, "mmvp_val"), spec=spec,
                                                  n_pairs_per_attribute=sc["mmvp_pairs"], seed=1),
                     "zero_shot": write_zero_shot_sets(os.path.join(d, "zero_shot.json"), spec)}
    return out


# -- arms ----------------------------------------------------------------------------------
def split_steps(total: int, n: int) -> list[int]:
    base = [total // n] * n
    base[0] += total - sum(base)
    return base


def arm_overrides(arm: str, sc: dict, k: int, group: int) -> list[str]:
    arm = SIMCLR_AS.get(arm, arm)
    T = sc["steps"]
    if arm in ("reference", "baseline"):
        return [f"stages=[{{max_steps: {T}}}]"]
    n = 2 if arm.startswith("mcl2") else 3
    init = "base" if arm == "mcl3_base" else "previous"
    steps = split_steps(T, n)
    stages = [f"{{max_steps: {steps[0]}}}"] + [f"{{max_steps: {s}, k: {k}, group_size: {group}, init: {init}}}"
                                               for s in steps[1:]]
    out = ["stages=[" + ", ".join(stages) + "]"]
    if arm == "mcl3_noclust":
        out.append(f"cluster.min_label_size={10 * sc['n_train'] + 1}")  # every cluster too small: one label
    return out


def run_command(arm: str, seed: int, run_dir: str, data: dict, args, sc: dict) -> list[str]:
    simclr = arm in SIMCLR_ARMS
    ref = SIMCLR_AS.get(arm, arm) == "reference"
    d = data["no_easy" if ref else "main"]
    fields = HARD if ref else ATTRS
    split = args.split
    ov = [f"data.train_shards={d['train']}", f"eval.test_shards={d[split]}"]
    if not simclr:  # SimCLR has no text tower: no zero-shot, no MMVP statements
        ov += [f"eval.mmvp_dir={d['mmvp_' + split]}", f"eval.zero_shot_classes={d['zero_shot']}"]
    ov += ["eval.label_fields=[" + ",".join(fields) + "]", f"train.seed={seed}", f"train.global_batch_size={sc['batch']}", f"data.workers={sc['workers']}",
          f"eval.probe_max_samples={sc['probe']}"] + arm_overrides(arm, sc, args.k, args.group)
    ov += args.override
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                 "--master_port", str(29500 + hash(run_dir) % 2000)] if args.nproc > 1 else [sys.executable])
    config = args.simclr_config if simclr else args.config
    return launcher + [os.path.join(ROOT, "launch", "pretrain.py"), "--config", config, "--run-dir", run_dir] + ov


def run_all(jobs: list[tuple[str, int, str, list[str]]], parallel: int, threads: int) -> dict[str, float]:
    """Run the pipeline commands, `parallel` at a time; returns each run's wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    pending, running, times = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            arm, seed, run_dir, cmd = pending.pop(0)
            os.makedirs(run_dir, exist_ok=True)
            log = open(run_dir + ".log", "a")
            print(f"[bench] start {arm} seed {seed}  (log {run_dir}.log)", flush=True)
            running.append((arm, seed, run_dir, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                                  stderr=subprocess.STDOUT), time.time(), log))
        time.sleep(2)
        for item in list(running):
            arm, seed, run_dir, proc, t0, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            times[run_dir] = time.time() - t0
            if proc.returncode:
                for _, _, _, p, _, lg in running:
                    p.kill()
                raise SystemExit(f"[bench] {arm} seed {seed} failed (exit {proc.returncode}); see {run_dir}.log")
            print(f"[bench] done  {arm} seed {seed} in {times[run_dir]:.0f} s", flush=True)
    return times


# -- results -------------------------------------------------------------------------------
def model_scores(res: dict) -> dict:
    """{attribute: {"probe", "zero_shot", "pairs"}} of one model's eval entry."""
    out = {}
    for a in ATTRS:
        if a not in res.get("zero_shot", {}):
            continue
        out[a] = {"probe": res["linear_probe"][a]["top1"], "zero_shot": res["zero_shot"][a]["top1"],
                  "pairs": res.get("mmvp", {}).get("per_category", {}).get(a, float("nan"))}
    return out


def simclr_scores(res: dict) -> dict:
    """{attribute: {"probe", "knn"}} of one SimCLR model's eval entry (no text: no zero-shot / pairs)."""
    return {a: {"probe": res["linear_probe"][a]["top1"], "knn": res["knn"][a]["top1"]}
            for a in ATTRS if a in res.get("linear_probe", {})}


def purity_of(run_dir: str, n_stages: int) -> dict:
    from mcl_dist.inspect import stage_purity

    out = {}
    for s in range(1, n_stages):
        out[s] = {src: stage_purity(run_dir, s, source=src)["mean_purity"] for src in ("clusters", "labels")}
    return out


def collect(runs: dict, args) -> dict:
    """summary[arm][model][attr][metric] = list over seeds; purity[arm][stage][source][attr] = list."""
    summary, purity, label_stats = {}, {}, {}
    for (arm, seed), run_dir in runs.items():
        with open(os.path.join(run_dir, "eval", "results.json")) as f:
            results = json.load(f)
        for model, res in results.items():
            scores = simclr_scores(res) if arm in SIMCLR_ARMS else model_scores(res)
            for a, m in scores.items():
                for metric, v in m.items():
                    summary.setdefault(arm, {}).setdefault(model, {}).setdefault(a, {}).setdefault(metric, []).append(v)
        n_stages = sum(1 for m in results if m.startswith("stage_"))
        if arm.startswith("mcl") or arm.startswith("simclr_mcl"):
            for s, by_src in purity_of(run_dir, n_stages).items():
                for src, per_attr in by_src.items():
                    for a, v in per_attr.items():
                        purity.setdefault(arm, {}).setdefault(s, {}).setdefault(src, {}).setdefault(a, []).append(v)
                man = json.load(open(os.path.join(run_dir, "manifest.json")))
                st = man.get("steps", {}).get(f"stage_{s}/labels", {}).get("outputs", {})
                label_stats.setdefault(arm, {}).setdefault(s, []).append(st)
    return {"summary": summary, "purity": purity, "label_stats": label_stats}


def ms(v: list) -> str:
    v = np.asarray(v, float)
    return f"{v.mean():.2f}±{v.std():.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def mean(v) -> float:
    return float(np.mean(v))


def write_tables(res: dict, args, sc: dict, times: dict) -> str:
    S, P = res["summary"], res["purity"]
    lines = [f"# Feature-suppression benchmark ({args.scale} scale, split `{args.split}`)", "",
             f"T = {sc['steps']} total steps per arm, batch {sc['batch']}, {sc['n_train']} training samples, "
             f"K = {args.k}, group size {args.group}, seeds {args.seeds}; mean±std over seeds. "
             f"easy = {', '.join(EASY)}; hard (suppressed) = {', '.join(HARD)}.", ""]
    lines += ["## Integrated model of each arm (pair / zero-shot / linear probe)", "",
              "| arm | " + " | ".join(ATTRS) + " |", "|---|" + "---|" * len(ATTRS)]
    for arm in [a for a in ARMS if a in S]:
        cells = []
        for a in ATTRS:
            m = S[arm]["integrated"].get(a)
            cells.append("—" if m is None else f"{ms(m['pairs'])} / {ms(m['zero_shot'])} / {ms(m['probe'])}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Every model (stage and integrated), MMVP-style pair accuracy", "",
              "| arm | model | " + " | ".join(ATTRS) + " |", "|---|---|" + "---|" * len(ATTRS)]
    for arm in [a for a in ARMS if a in S]:
        for model in S[arm]:
            lines.append(f"| {arm} | {model} | " + " | ".join(
                ms(S[arm][model][a]["pairs"]) if a in S[arm][model] else "—" for a in ATTRS) + " |")
    for metric, title in (("zero_shot", "zero-shot accuracy"), ("probe", "linear-probe accuracy")):
        lines += ["", f"## Every model, {title}", "",
                  "| arm | model | " + " | ".join(ATTRS) + " |", "|---|---|" + "---|" * len(ATTRS)]
        for arm in [a for a in ARMS if a in S]:
            for model in S[arm]:
                lines.append(f"| {arm} | {model} | " + " | ".join(
                    ms(S[arm][model][a][metric]) if a in S[arm][model] else "—" for a in ATTRS) + " |")
    lines += ["", "## Cluster purity (size-weighted majority share per attribute; chance ≈ 1/#values)", "",
              "| arm | stage | grouping | #groups (median size) | " + " | ".join(ATTRS) + " |",
              "|---|---|---|---|" + "---|" * len(ATTRS)]
    for arm in P:
        for s in sorted(P[arm]):
            for src in ("clusters", "labels"):
                st = res["label_stats"].get(arm, {}).get(s, [{}])
                size = (f"{mean([x.get('num_labels', 0) for x in st]):.0f} ({mean([x.get('median_size', 0) for x in st]):.0f})"
                        if src == "labels" else f"{args.k}")
                lines.append(f"| {arm} | {s} | {'k-means clusters' if src == 'clusters' else 'pseudo-labels'} | {size} | "
                             + " | ".join(ms(P[arm][s][src][a]) for a in ATTRS) + " |")
    if times:
        lines += ["", f"Wall time of the runs: {sum(times.values()) / 60:.1f} run-minutes "
                      f"({len(times)} runs, {args.jobs} at a time)."]
    return "\n".join(lines) + "\n"


def charts(res: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S, paths = res["summary"], []
    arms = [a for a in ARMS if a in S and a != "reference"]
    for metric, title in (("pairs", "MMVP-style pair accuracy"), ("zero_shot", "zero-shot accuracy"),
                          ("probe", "linear-probe accuracy")):
        fig, ax = plt.subplots(figsize=(10, 4))
        w = 0.8 / (len(arms) + 1)
        x = np.arange(len(ATTRS))
        for i, arm in enumerate(arms + (["reference"] if "reference" in S else [])):
            vals = [S[arm]["integrated"].get(a, {}).get(metric) for a in ATTRS]
            m = [np.mean(v) if v else np.nan for v in vals]
            e = [np.std(v) if v else 0 for v in vals]
            ax.bar(x + (i - len(arms) / 2) * w, m, w, yerr=e, capsize=2,
                   label=arm + (" (no easy attributes)" if arm == "reference" else ""))
        ax.set_xticks(x, [a + (" (hard)" if a in HARD else "") for a in ATTRS])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(title)
        ax.set_title(f"{title}, integrated model of each arm (mean ± std over seeds)")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        p = os.path.join(out, f"{metric}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    if "mcl3_prev" in S:  # per stage of 3-stage MCL vs baseline, pairs
        models = list(S["mcl3_prev"])
        fig, ax = plt.subplots(figsize=(10, 4))
        w = 0.8 / (len(models) + 1)
        x = np.arange(len(ATTRS))
        for i, (name, model) in enumerate([("baseline", "integrated")] + [("mcl3_prev", m) for m in models]):
            if name not in S:
                continue
            m = [np.mean(S[name][model][a]["pairs"]) for a in ATTRS]
            ax.bar(x + (i - len(models) / 2) * w, m, w, label=f"{name} {model}" if name == "mcl3_prev" else "baseline")
        ax.set_xticks(x, ATTRS)
        ax.set_ylim(0, 1.05)
        ax.set_title("MMVP-style pair accuracy per stage, 3-stage MCL (init=previous)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out, "pairs_per_stage.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def final_lines(res: dict) -> list[str]:
    S = res["summary"]
    if "mcl3_prev" not in S or "baseline" not in S:
        return ["(the final ratios need the baseline and mcl3_prev arms)"]
    mcl, base = S["mcl3_prev"]["integrated"], S["baseline"]["integrated"]
    hard_m = mean([mean(mcl[a]["pairs"]) for a in HARD])
    hard_b = mean([mean(base[a]["pairs"]) for a in HARD])
    easy_m = mean([mean(mcl[a]["pairs"]) for a in EASY])
    acc = hard_m / hard_b if hard_b > 0 else float("inf")
    err = (1 - hard_m) / (1 - hard_b) if hard_b < 1 else float("inf")
    return [f"pair accuracy ratio (integrated MCL / baseline) on suppressed attributes: {acc:.2f}; "
            f"easy attribute: {100 * easy_m:.1f}%",
            f"pair error ratio (integrated MCL / baseline) on suppressed attributes: {err:.2f}; "
            f"easy attribute: {100 * easy_m:.1f}%"]


# -- SimCLR (unimodal) arm -----------------------------------------------------------------
def write_tables_simclr(res: dict, args, sc: dict, times: dict) -> str:
    S, P = res["summary"], res["purity"]
    arms = [a for a in SIMCLR_ARMS if a in S]
    lines = [f"# Feature-suppression benchmark, unimodal SimCLR arm ({args.scale} scale, split `{args.split}`)", "",
             f"`{args.simclr_config}`; T = {sc['steps']} total steps per arm, batch {sc['batch']}, {sc['n_train']} "
             f"training images, K = {args.k}, group size {args.group}, seeds {args.seeds} (reference: "
             f"{res['settings']['reference_seeds']}); mean±std over seeds. easy = {', '.join(EASY)}; "
             f"hard (suppressed) = {', '.join(HARD)}.", ""]
    for metric, title in (("probe", "linear-probe accuracy"), ("knn", "k-NN accuracy (k = 20)")):
        lines += [f"## Every model (stage and integrated), {title}", "",
                  "| arm | model | " + " | ".join(ATTRS) + " |", "|---|---|" + "---|" * len(ATTRS)]
        for arm in arms:
            for model in sorted(S[arm], key=lambda m: (m == "integrated", m)):
                lines.append(f"| {arm} | {model} | " + " | ".join(
                    ms(S[arm][model][a][metric]) if a in S[arm][model] else "—" for a in ATTRS) + " |")
        lines.append("")
    if P:
        lines += ["## Cluster purity (size-weighted majority share per attribute; chance ≈ 1/#values)", "",
                  "| arm | stage | grouping | #groups (median size) | " + " | ".join(ATTRS) + " |",
                  "|---|---|---|---|" + "---|" * len(ATTRS)]
        for arm in [a for a in SIMCLR_ARMS if a in P]:
            for s in sorted(P[arm]):
                for src in ("clusters", "labels"):
                    st = res["label_stats"].get(arm, {}).get(s, [{}])
                    size = (f"{mean([x.get('num_labels', 0) for x in st]):.0f} "
                            f"({mean([x.get('median_size', 0) for x in st]):.0f})" if src == "labels" else f"{args.k}")
                    lines.append(f"| {arm} | {s} | {'k-means clusters' if src == 'clusters' else 'pseudo-labels'} | "
                                 f"{size} | " + " | ".join(ms(P[arm][s][src][a]) for a in ATTRS) + " |")
        lines.append("")
    if times:
        lines += [f"Wall time of the runs: {sum(times.values()) / 60:.1f} run-minutes "
                  f"({len(times)} runs, {args.jobs} at a time).", ""]
    return "\n".join(lines)


def charts_simclr(res: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = res["summary"]
    bars = [(arm, "integrated") for arm in ("simclr_baseline", "simclr_mcl2", "simclr_mcl3", "simclr_mcl3_noclust")
            if arm in S]
    if "simclr_mcl3" in S:
        bars += [("simclr_mcl3", m) for m in sorted(S["simclr_mcl3"]) if m.startswith("stage_")]
    if "simclr_reference" in S:
        bars.append(("simclr_reference", "integrated"))
    fig, ax = plt.subplots(figsize=(11, 4))
    w = 0.85 / max(len(bars), 1)
    x = np.arange(len(ATTRS))
    for i, (arm, model) in enumerate(bars):
        vals = [S[arm][model].get(a, {}).get("probe") for a in ATTRS]
        m = [np.mean(v) if v else np.nan for v in vals]
        e = [np.std(v) if v else 0 for v in vals]
        label = arm.replace("simclr_", "") + ("" if model == "integrated" else f" {model}")
        ax.bar(x + (i - (len(bars) - 1) / 2) * w, m, w, yerr=e, capsize=2,
               label=label + (" (no easy attributes)" if arm == "simclr_reference" else ""))
    ax.set_xticks(x, [a + (" (hard)" if a in HARD else "") for a in ATTRS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear-probe accuracy")
    ax.set_title("SimCLR: linear-probe accuracy per attribute (integrated models; 3-stage MCL per stage; mean ± std)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    p = os.path.join(out, "simclr_probe.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def final_line_simclr(res: dict) -> list[str]:
    S = res["summary"]
    if "simclr_mcl3" not in S or "simclr_baseline" not in S:
        return ["(the final line needs the simclr_baseline and simclr_mcl3 arms)"]
    mcl, base = S["simclr_mcl3"]["integrated"], S["simclr_baseline"]["integrated"]
    gain = 100 * mean([mean(mcl[a]["probe"]) - mean(base[a]["probe"]) for a in HARD])
    return [f"linear-probe gain (integrated MCL - baseline) on suppressed attributes: {gain:.1f} points; "
            f"easy attribute: {100 * mean(mcl['color']['probe']):.1f}%"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--objective", choices=("clip", "simclr"), default="clip",
                   help="which arms: the CLIP ones (default) or the unimodal SimCLR ones only")
    p.add_argument("--config", default="configs/bench_suppression.yaml")
    p.add_argument("--simclr-config", default="configs/bench_simclr.yaml")
    p.add_argument("--out", default=None,
                   help="default runs/bench_suppression_<scale>_<split> (SimCLR: runs/bench_simclr_<scale>_<split>)")
    p.add_argument("--data-dir", default=None, help="default data/bench_suppression_<scale>")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="evaluation split; choose settings on val, report test")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reference-seeds", type=int, nargs="+", default=None,
                   help="seeds of the no-easy reference (default: the first seed only)")
    p.add_argument("--arms", nargs="+", default=None, choices=ARMS + SIMCLR_ARMS,
                   help="default: every arm of --objective")
    p.add_argument("--steps", type=int, default=None, help="total steps T per arm (default: the scale's)")
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--group", type=int, default=None, help="stages' group_size")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun when > 1)")
    p.add_argument("--override", nargs="*", default=[], help="extra config overrides for every run")
    p.add_argument("--report-only", action="store_true", help="only collect finished runs")
    args = p.parse_args(argv)
    if args.arms is None:
        args.arms = SIMCLR_ARMS if args.objective == "simclr" else ARMS
    simclr = all(a in SIMCLR_ARMS for a in args.arms)
    if not simclr and any(a in SIMCLR_ARMS for a in args.arms):
        p.error("run the CLIP arms and the SimCLR arms separately (--objective simclr)")
    sc = dict(SCALES[args.scale])
    if args.steps:
        sc["steps"] = args.steps
    args.k = args.k or sc["k"]
    args.group = args.group or sc["group"]
    args.jobs = args.jobs or sc["jobs"]
    threads = args.threads or sc["threads"]
    out = args.out or os.path.join("runs", f"bench_{'simclr' if simclr else 'suppression'}_{args.scale}_{args.split}")
    data_dir = args.data_dir or os.path.join("data", f"bench_suppression_{args.scale}")
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    data = make_data(data_dir, sc)
    print(f"[bench] data ready in {time.time() - t0:.0f} s under {data_dir}", flush=True)

    runs, jobs = {}, []
    ref_seeds = args.reference_seeds if args.reference_seeds is not None else args.seeds[:1]
    for arm in args.arms:
        for seed in (ref_seeds if SIMCLR_AS.get(arm, arm) == "reference" else args.seeds):
            run_dir = os.path.join(out, f"{arm}_s{seed}")
            runs[(arm, seed)] = run_dir
            if not os.path.exists(os.path.join(run_dir, "eval", "results.json")) and not args.report_only:
                jobs.append((arm, seed, run_dir, run_command(arm, seed, run_dir, data, args, sc)))
    # longest first (3 stages evaluate 4 models), so the pool ends together
    jobs.sort(key=lambda j: (not SIMCLR_AS.get(j[0], j[0]).startswith("mcl3"), j[1]))
    times = run_all(jobs, args.jobs, threads)
    runs = {k: v for k, v in runs.items() if os.path.exists(os.path.join(v, "eval", "results.json"))}
    res = collect(runs, args)
    res["scale"], res["settings"] = args.scale, {**sc, "k": args.k, "group": args.group, "seeds": args.seeds,
                                                 "split": args.split, "reference_seeds": ref_seeds,
                                                 "config": args.simclr_config if simclr else args.config}
    res["purity"] = {arm: {str(s): v for s, v in d.items()} for arm, d in res["purity"].items()}
    res["label_stats"] = {arm: {str(s): v for s, v in d.items()} for arm, d in res["label_stats"].items()}
    from mcl_dist.io import write_json

    write_json(res, os.path.join(out, "summary.json"))
    res["purity"] = {arm: {int(s): v for s, v in d.items()} for arm, d in res["purity"].items()}
    res["label_stats"] = {arm: {int(s): v for s, v in d.items()} for arm, d in res["label_stats"].items()}
    if simclr:
        md = write_tables_simclr(res, args, sc, times)
        S = res["summary"]
        if "simclr_reference" in S and "simclr_baseline" in S:
            md += "\n" + "\n".join(
                f"- suppression check, {a}: baseline linear probe {mean(S['simclr_baseline']['integrated'][a]['probe']):.2f} "
                f"vs the same model without easy attributes {mean(S['simclr_reference']['integrated'][a]['probe']):.2f}"
                for a in HARD) + "\n"
        pngs = charts_simclr(res, out)
        final = final_line_simclr(res)
        md += "\nChart: " + ", ".join(os.path.basename(p) for p in pngs) + "\n\n```\n" + "\n".join(final) + "\n```\n"
        return publish(md, out, final, t0)
    md = write_tables(res, args, sc, times)
    S = res["summary"]
    check = []
    if "reference" in S and "baseline" in S:
        for a in HARD:
            check.append(f"suppression check, {a}: baseline pair accuracy {mean(S['baseline']['integrated'][a]['pairs']):.2f} "
                         f"(zero-shot {mean(S['baseline']['integrated'][a]['zero_shot']):.2f}) vs the same model "
                         f"without easy attributes {mean(S['reference']['integrated'][a]['pairs']):.2f} "
                         f"(zero-shot {mean(S['reference']['integrated'][a]['zero_shot']):.2f})")
    pngs = charts(res, out)
    final = final_lines(res)
    md += "\n" + "\n".join(f"- {c}" for c in check) + "\n\nCharts: " + ", ".join(os.path.basename(p) for p in pngs)
    md += "\n\n```\n" + "\n".join(final) + "\n```\n"
    return publish(md, out, final, t0)


def publish(md: str, out: str, final: list, t0: float) -> int:
    """Write results.md atomically, print it, and end with the summary lines."""
    from mcl_dist.io import write_text

    write_text(md, os.path.join(out, "results.md"))
    print(md)
    print(f"[bench] total wall time {(time.time() - t0) / 60:.1f} min; results in {out}/results.md")
    for line in final:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
