#!/usr/bin/env python
"""Feature-suppression benchmark: does MCL undo what a single-stage CLIP suppresses?

Every arm is a real pipeline run (launch/pretrain.py; one process per run by default, or
torchrun with --nproc) on the same synthetic data (mcl_dist.synthetic, 1,200 easy combinations;
easy = color, position, background, frame; hard = shape, texture), the same total number of
optimizer steps T and the same seeds (configs/bench_suppression.yaml: the tiny-vit-p4 tower,
no augmentation, decoded samples cached in memory, warm-up 5% of each stage):

    reference      single stage, T steps, on the SAME data with the easy attributes held constant
                   (SyntheticSpec.no_easy): how well this tower learns the hard attributes unsuppressed
    baseline       single stage, T steps
    mclN_prev      N stages of T/N steps, each initialised from the previous stage (N = 2..5)
    mcl3_base      3 stages, init=base (stage 0's initial weights)
    mclN_noclust   N stages, init=previous, NO clusters (cluster.min_label_size larger than the data:
                   every sample falls back to the root label, so the sampler and the masked loss are
                   plain CLIP training and only the restarts remain)
    mclN_prev_kK   the K sweep (K = 16, 64 at the headline stage count), first seed only

Reported per arm, per model (each stage and the integrated one), per attribute: linear-probe,
zero-shot and MMVP-style pair accuracy, mean and spread over seeds; per MCL stage the label purity
and the label-free stopping signal (mcl_dist.stop_signal); the integrated model against its best
single stage. Writes <out>/results.md, <out>/summary.json and PNG charts, and ends with the
fair-baseline line and the pair error ratio of every stage count.

    python tools/bench_feature_suppression.py                      # CPU defaults, test split
    python tools/bench_feature_suppression.py --split val          # settings are chosen on val only
    python tools/bench_feature_suppression.py --scale gpu          # larger data, T=3000, on a GPU
    python tools/bench_feature_suppression.py --arms baseline mcl4_prev --seeds 0 1 2

Arms run in the order given (default: the order above, most important first), and a run whose
eval/results.json exists is reused: an interrupted benchmark resumes where it stopped, and a later
session can add arms or seeds to the same --out.

Unimodal arm (--objective simclr; configs/bench_simclr.yaml): the same data, images only, colour
jitter and grayscale OFF so colour stays the easy feature, a small torchvision ResNet; linear probe
and k-NN per attribute only (arms simclr_reference, simclr_baseline, simclr_mcl2, simclr_mcl3,
simclr_mcl3_noclust; ends with the linear-probe gain line).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import bench_suppression_report as report
from bench_suppression_report import ATTRS, HARD, SIMCLR_HARD, SUPPRESSED, mean

# most important first: a benchmark cut short still has the headline comparison
ARMS = ["baseline", "mcl4_prev", "reference", "mcl4_noclust", "mcl3_prev", "mcl5_prev", "mcl2_prev",
        "mcl3_base", "mcl3_noclust", "mcl4_prev_k16", "mcl4_prev_k64"]
HEADLINE = "mcl4_prev"  # chosen before the test run (issue 13's separate data set: 4 stages won)
SIMCLR_ARMS = ["simclr_reference", "simclr_baseline", "simclr_mcl2", "simclr_mcl3", "simclr_mcl3_noclust"]
SIMCLR_AS = {"simclr_reference": "reference", "simclr_baseline": "baseline", "simclr_mcl2": "mcl2_prev",
             "simclr_mcl3": "mcl3_prev", "simclr_mcl3_noclust": "mcl3_noclust"}  # same stage lists as these CLIP arms
ARM_RE = re.compile(r"^mcl(\d)_(prev|base|noclust)(?:_k(\d+))?$")

SCALES = {  # data size, total steps T, batch, K / group size per stage, concurrent runs, threads each
    "cpu": dict(n_train=8192, n_eval=1024, mmvp_pairs=50, steps=2000, batch=128, k=32, group=32, jobs=2,
                threads=1, workers=0, probe=4096, device_note="2 CPU cores"),
    "gpu": dict(n_train=65536, n_eval=2048, mmvp_pairs=100, steps=3000, batch=128, k=32, group=32, jobs=1,
                threads=8, workers=0, probe=8000, device_note="1 GPU"),
}


# -- data ----------------------------------------------------------------------------------
def make_data(root: str, sc: dict, simclr: bool = False) -> dict:
    """main/ and the reference's data set (no_easy_pos/; SimCLR: no_easy/, which also holds position
    constant), each: train, test and val shards, MMVP test + val folders."""
    from mcl_dist.synthetic import (SyntheticSpec, shard_pattern, write_mmvp_pairs, write_synthetic_shards,
                                    write_zero_shot_sets)

    out = {}
    # the reference holds only colour, background and frame constant: position varies, as it is one
    # of the attributes the baseline suppresses (bench_suppression_report.HARD)
    no_easy = (("no_easy", SyntheticSpec(no_easy=True)) if simclr else
               ("no_easy_pos", SyntheticSpec(easy=tuple(report.EASY), hard=tuple(HARD), no_easy=True)))
    for name, spec in (("main", SyntheticSpec()), no_easy):
        d = os.path.join(root, name)
        per = 1024
        train = write_synthetic_shards(d, n_samples=sc["n_train"], samples_per_shard=per, seed=0, spec=spec,
                                       prefix="train", progress=False)
        test = write_synthetic_shards(d, n_samples=sc["n_eval"], samples_per_shard=per, seed=0, spec=spec,
                                      prefix="test", progress=False)
        val = write_synthetic_shards(d, n_samples=sc["n_eval"], samples_per_shard=per, seed=1, spec=spec,
                                     prefix="val", progress=False)
        out[name] = {"train": shard_pattern(train), "test": shard_pattern(test), "val": shard_pattern(val),
                     "mmvp_test": write_mmvp_pairs(os.path.join(d, "mmvp"), spec=spec,
                                                   n_pairs_per_attribute=sc["mmvp_pairs"], seed=0),
                     "mmvp_val": write_mmvp_pairs(os.path.join(d, "mmvp_val"), spec=spec,
                                                  n_pairs_per_attribute=sc["mmvp_pairs"], seed=1),
                     "zero_shot": write_zero_shot_sets(os.path.join(d, "zero_shot.json"), spec)}
    return out


# -- arms ----------------------------------------------------------------------------------
def parse_arm(arm: str, k_default: int) -> tuple[int, str, int]:
    """(stages, init or 'noclust', K) of a CLIP arm name."""
    arm = SIMCLR_AS.get(arm, arm)
    if arm in ("reference", "baseline"):
        return 1, "", k_default
    m = ARM_RE.match(arm)
    if not m:
        raise SystemExit(f"unknown arm {arm!r}: use reference, baseline or mclN_(prev|base|noclust)[_kK]")
    return int(m.group(1)), m.group(2), int(m.group(3) or k_default)


def split_steps(total: int, n: int) -> list[int]:
    base = [total // n] * n
    base[0] += total - sum(base)
    return base


def arm_overrides(arm: str, sc: dict, k: int, group: int) -> list[str]:
    n, init, k = parse_arm(arm, k)
    steps = split_steps(sc["steps"], n)
    if n == 1:
        return [f"stages=[{{max_steps: {steps[0]}}}]"]
    init_as = {"prev": "previous", "noclust": "previous", "base": "base"}[init]
    stages = [f"{{max_steps: {steps[0]}}}"] + [f"{{max_steps: {s}, k: {k}, group_size: {group}, init: {init_as}}}"
                                               for s in steps[1:]]
    out = ["stages=[" + ", ".join(stages) + "]"]
    if init == "noclust":
        out.append(f"cluster.min_label_size={10 * sc['n_train'] + 1}")  # every cluster too small: one label
    return out


def run_command(arm: str, seed: int, run_dir: str, data: dict, args, sc: dict) -> list[str]:
    simclr = arm in SIMCLR_ARMS
    ref = SIMCLR_AS.get(arm, arm) == "reference"
    d = data[("no_easy" if simclr else "no_easy_pos") if ref else "main"]
    fields = (SIMCLR_HARD if simclr else HARD) if ref else ATTRS
    split = args.split
    ov = [f"data.train_shards={d['train']}", f"eval.test_shards={d[split]}"]
    if not simclr:  # SimCLR has no text tower: no zero-shot, no MMVP statements
        ov += [f"eval.mmvp_dir={d['mmvp_' + split]}", f"eval.zero_shot_classes={d['zero_shot']}"]
    ov += ["eval.label_fields=[" + ",".join(fields) + "]", f"train.seed={seed}", f"train.global_batch_size={sc['batch']}",
           f"data.workers={sc['workers']}", f"eval.probe_max_samples={sc['probe']}"] + arm_overrides(arm, sc, args.k, args.group)
    ov += args.override
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                 "--master_port", str(29500 + hash(run_dir) % 2000)] if args.nproc > 1 else [sys.executable])
    config = args.simclr_config if simclr else args.config
    return launcher + [os.path.join(ROOT, "launch", "pretrain.py"), "--config", config, "--run-dir", run_dir] + ov


def planned_runs(arms: list[str], seeds: list[int], ref_seeds: list[int]) -> list[tuple[str, int]]:
    """(arm, seed) in run order: seed-major (every arm's first seed before any arm's second), arms
    in the given order; the reference runs its own seeds, a K-sweep arm the first seed only."""
    per_arm = {arm: ref_seeds if SIMCLR_AS.get(arm, arm) == "reference" else seeds[:1] if "_k" in arm else seeds
               for arm in arms}
    rounds = max(len(v) for v in per_arm.values())
    return [(arm, per_arm[arm][i]) for i in range(rounds) for arm in arms if i < len(per_arm[arm])]


def run_all(jobs: list[tuple[str, int, str, list[str]]], parallel: int, threads: int) -> dict[str, float]:
    """Run the pipeline commands, `parallel` at a time; returns each run's wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    pending, running, times = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            arm, seed, run_dir, cmd = pending.pop(0)
            os.makedirs(run_dir, exist_ok=True)
            log = open(run_dir + ".log", "a")
            print(f"[bench] start {arm} seed {seed}  (log {run_dir}.log; {len(pending)} more queued)", flush=True)
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
def model_scores(res: dict, simclr: bool) -> dict:
    """{attribute: {metric: value}} of one model's eval entry."""
    if simclr:
        return {a: {"probe": res["linear_probe"][a]["top1"], "knn": res["knn"][a]["top1"]}
                for a in ATTRS if a in res.get("linear_probe", {})}
    return {a: {"probe": res["linear_probe"][a]["top1"], "zero_shot": res["zero_shot"][a]["top1"],
                "pairs": res.get("mmvp", {}).get("per_category", {}).get(a, float("nan"))}
            for a in ATTRS if a in res.get("zero_shot", {})}


def stage_record(run_dir: str, s: int, results: dict, manifest: dict, purity: dict) -> dict:
    """One MCL stage of one run: stopping signal, label purity, loss at start and end, hard pairs."""
    out = {"label_purity": purity["labels"]}
    lab = manifest.get("steps", {}).get(f"stage_{s}/labels", {}).get("outputs", {})
    for key in ("nmi", "split_labels", "split_samples", "labels_before", "labels_after"):
        if f"signal/{key}" in lab:
            out[key] = lab[f"signal/{key}"]
    rows = [json.loads(line) for line in open(os.path.join(run_dir, f"stage_{s}", "metrics.jsonl"))]
    out["loss_start"], out["loss_end"] = rows[0]["loss"], rows[-1]["loss"]
    per = results.get(f"stage_{s}", {}).get("mmvp", {}).get("per_category", {})
    out["hard_pairs"] = mean([per[a] for a in SUPPRESSED if a in per])
    return out


def collect(runs: dict) -> dict:
    """summary[arm][model][attr][metric], purity[arm][stage][source][attr], stages[arm][stage][field]:
    each a list over seeds."""
    from mcl_dist.cluster_inspect import stage_purity

    summary, purity, label_stats, stages, seeds = {}, {}, {}, {}, {}
    for (arm, seed), run_dir in runs.items():
        seeds.setdefault(arm, []).append(seed)  # the order of every list below
        results = json.load(open(os.path.join(run_dir, "eval", "results.json")))
        for model, res in results.items():
            for a, m in model_scores(res, arm in SIMCLR_ARMS).items():
                for metric, v in m.items():
                    summary.setdefault(arm, {}).setdefault(model, {}).setdefault(a, {}).setdefault(metric, []).append(v)
        n_stages = sum(1 for m in results if m.startswith("stage_"))
        manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
        for s in range(1, n_stages):
            pur = {src: stage_purity(run_dir, s, source=src)["mean_purity"] for src in ("clusters", "labels")}
            for src, per_attr in pur.items():
                for a, v in per_attr.items():
                    purity.setdefault(arm, {}).setdefault(s, {}).setdefault(src, {}).setdefault(a, []).append(v)
            label_stats.setdefault(arm, {}).setdefault(s, []).append(
                manifest.get("steps", {}).get(f"stage_{s}/labels", {}).get("outputs", {}))
            for key, v in stage_record(run_dir, s, results, manifest, pur).items():
                stages.setdefault(arm, {}).setdefault(s, {}).setdefault(key, []).append(v)
    return {"summary": summary, "purity": purity, "label_stats": label_stats, "stages": stages, "seeds": seeds}


def suppression_check(S: dict, simclr: bool) -> list[str]:
    base, ref = ("simclr_baseline", "simclr_reference") if simclr else ("baseline", "reference")
    if base not in S or ref not in S:
        return []
    metric = "probe" if simclr else "pairs"
    return [f"suppression check, {a}: baseline {metric} {mean(S[base]['integrated'][a][metric]):.2f} vs the same "
            f"model without easy attributes {mean(S[ref]['integrated'][a][metric]):.2f}"
            for a in (SIMCLR_HARD if simclr else HARD) if a in S[ref]["integrated"]]


def write_report(res: dict, args, sc: dict, times: dict, out: str, simclr: bool) -> tuple[str, list[str]]:
    arms = SIMCLR_ARMS if simclr else list(dict.fromkeys(ARMS + args.arms))
    k_of = {arm: parse_arm(arm, args.k)[2] for arm in res["summary"]}
    md = [f"# Feature-suppression benchmark ({'SimCLR, ' if simclr else ''}{args.scale} scale, split `{args.split}`)", "",
          f"`{args.simclr_config if simclr else args.config}`; T = {sc['steps']} total steps per arm, batch {sc['batch']}, "
          f"{sc['n_train']} training samples, K = {args.k} (unless the arm says), group size {args.group}, seeds "
          f"{args.seeds} (reference: {res['settings']['reference_seeds']}); mean±std over seeds. "
          f"easy = {', '.join(report.EASY)}; hard = {', '.join(HARD)}, of which the baseline suppresses "
          f"{', '.join(SUPPRESSED)} (measured on the validation split).", ""]
    if simclr:
        md += report.simclr_tables(res, arms)
        pngs, final = report.simclr_chart(res, out), report.simclr_final_line(res)
    else:
        md += report.clip_tables(res, arms) + [""] + report.dilution_table(res, arms) + [""]
        pngs, final = report.clip_charts(res, out, arms, args.headline), report.final_lines(res, args.headline, k_of)
    md += report.purity_table(res, k_of) + [""] + report.signal_table(res) + [""]
    if times:
        md.append(f"Wall time of the runs started by this invocation: {sum(times.values()) / 60:.1f} run-minutes "
                  f"({len(times)} runs, {args.jobs} at a time).")
    md += [""] + [f"- {c}" for c in suppression_check(res["summary"], simclr)]
    md += ["", "Charts: " + ", ".join(os.path.basename(p) for p in pngs), "", "```", *final, "```", ""]
    return "\n".join(md), final


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
    p.add_argument("--arms", nargs="+", default=None,
                   help=f"default: every arm of --objective, in this order: {' '.join(ARMS)}; any "
                        "mclN_(prev|base|noclust)[_kK] is accepted")
    p.add_argument("--runs", nargs="+", default=None, metavar="ARM:SEED",
                   help="exact runs in this order (e.g. baseline:0 mcl4_prev:0 baseline:1), instead of "
                        "--arms x --seeds; the report covers every finished run of --arms x --seeds too")
    p.add_argument("--headline", default=HEADLINE, help="the MCL arm of the final ratio line")
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
    sc["steps"] = args.steps or sc["steps"]
    args.k, args.group = args.k or sc["k"], args.group or sc["group"]
    args.jobs = args.jobs or sc["jobs"]
    for arm in args.arms:
        parse_arm(arm, args.k)  # unknown names stop here, before any run
    out = args.out or os.path.join("runs", f"bench_{'simclr' if simclr else 'suppression'}_{args.scale}_{args.split}")
    data_dir = args.data_dir or os.path.join("data", f"bench_suppression_{args.scale}")
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    data = make_data(data_dir, sc, simclr)
    print(f"[bench] data ready in {time.time() - t0:.0f} s under {data_dir}", flush=True)

    runs, jobs = {}, []
    ref_seeds = args.reference_seeds if args.reference_seeds is not None else args.seeds[:1]
    order = planned_runs(args.arms, args.seeds, ref_seeds)
    if args.runs:
        explicit = [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs]
        for arm, _ in explicit:
            parse_arm(arm, args.k)
        order = explicit + [r for r in order if r not in explicit]
        args.arms = list(dict.fromkeys(args.arms + [a for a, _ in explicit]))
    for arm, seed in order:
        run_dir = os.path.join(out, f"{arm}_s{seed}")
        runs[(arm, seed)] = run_dir
        wanted = not args.runs or (arm, seed) in explicit
        if wanted and not os.path.exists(os.path.join(run_dir, "eval", "results.json")) and not args.report_only:
            jobs.append((arm, seed, run_dir, run_command(arm, seed, run_dir, data, args, sc)))
    times = run_all(jobs, args.jobs, args.threads or sc["threads"])
    runs = {k: v for k, v in runs.items() if os.path.exists(os.path.join(v, "eval", "results.json"))}
    res = collect(runs)
    res["scale"], res["settings"] = args.scale, {**sc, "k": args.k, "group": args.group, "seeds": args.seeds,
                                                 "split": args.split, "reference_seeds": ref_seeds,
                                                 "config": args.simclr_config if simclr else args.config}
    from mcl_dist.files import write_json, write_text

    write_json(res, os.path.join(out, "summary.json"))  # stage numbers become strings in JSON
    md, final = write_report(res, args, sc, times, out, simclr)
    write_text(md, os.path.join(out, "results.md"))
    print(md)
    print(f"[bench] total wall time {(time.time() - t0) / 60:.1f} min; results in {out}/results.md")
    for line in final:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
