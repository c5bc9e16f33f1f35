#!/usr/bin/env python
"""Feature-suppression benchmark: does MCL undo what a single-stage CLIP suppresses, and does a
recipe chosen on one data family hold on the other?

Every arm is a real pipeline run (launch/pretrain.py; one process per run by default, forked from
a process that imported the entry point once (mcl_dist/bench/warm_launch.py; MCL_BENCH_FRESH=1
starts each from a fresh interpreter), or torchrun with --nproc) on the same synthetic data, the
same total number of optimizer steps T and the same seeds. Two families (--family; tools/bench_suppression_arms.py):

    A  shapes (mcl_dist.synthetic.trifeature): easy colour, background, frame; hard shape, texture, position;
       1,200 easy combinations; configs/bench_suppression.yaml
    B  glyphs (mcl_dist.synthetic.glyphs): easy ink, backdrop, band; hard letter (DejaVu capitals
       in 6 font styles), position (2 x 3 cells); 1,440 easy combinations; configs/bench_suppression_b.yaml
       (the same tower and training settings as A)

Arms (names in bench_suppression_arms.py): reference (no-easy data), baseline, mclN_prev /
mclN_base / mclN_noclust, the K sweep mcl4_prev_k16 / _k64 and auto-K mcl4_prev_kauto, and the
integration choices mcl4_prev_icka_drop / _icka_weight (the trained mcl4_prev run re-integrated
with model.integration_weights; no training). Every arm runs every seed (the reference: the first).

Reported per arm, per model (each stage and the integrated one), per attribute: linear-probe,
zero-shot and MMVP-style pair accuracy, per seed; per MCL stage the label purity and the
label-free stop signals (mcl_dist.clustering.stop_signal, mcl_dist.integration.stage_similarity); the integrated model
against its best single stage; once the stage sweep has run, the stage count each stop rule
(bench_suppression_stop.py, fixed before the sweep) picks and what it scored. Writes
<out>/results.md, <out>/summary.json and PNG charts. The report starts with one line per direction
(`transfer (recipe chosen on A, tested on B): pair error ratio per seed ...`, from this family's
runs and the other family's records) and ends with every MCL arm's pair error ratio per seed
against the same seed's baseline.

    python tools/bench_feature_suppression.py --family B           # CPU defaults, test split
    python tools/bench_feature_suppression.py --family B --split val   # settings are chosen on val only
    python tools/bench_feature_suppression.py --runs baseline:0 mcl4_prev:0 --family B
    python tools/bench_feature_suppression.py --family A --report-only

Arms run in the order given (default: the order above, most decisive first), and a run whose
eval/results.json exists is reused: an interrupted benchmark resumes where it stopped. Every
finished run leaves a record (bench_suppression_records.py) in docs/bench/records/<out name>
(committed; <out>/records for a given --out): a later session, whose checkout has no run dirs,
skips the recorded runs, adds arms or seeds, and reports from records and new runs alike. To
measure recorded runs again, give --records an empty directory.

Unimodal arm (--objective simclr, family A only; configs/bench_simclr.yaml): images only, colour
jitter and grayscale OFF so colour stays the easy feature, a small torchvision ResNet; linear probe
and k-NN per attribute (arms simclr_reference, simclr_baseline, simclr_mcl2, simclr_mcl3,
simclr_mcl3_noclust; ends with the linear-probe gain lines, per seed, of MCL and of its no-cluster
control). Its T is --simclr-steps (default 2,000 on the CPU scale), and its default --out names T,
so runs of another T are never reused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import bench_suppression_pairs as pairs
import bench_suppression_protocol as protocol
import bench_suppression_records as records
import bench_suppression_report as report
import bench_suppression_stop as stop
from bench_suppression_arms import (FAMILIES, HEADLINE, RECIPE_PREFIX, SCALES, SIMCLR_ARMS, SIMCLR_AS, arm_overrides, base_arm,
                                    data_digest, default_arms, make_data, parse_arm, planned_runs)
from bench_suppression_report import SIMCLR_HARD, mean
from mcl_dist.bench.warm_launch import WarmLauncher
from mcl_dist.core import layout


def run_command(arm: str, seed: int, run_dir: str, data: dict, args, sc: dict) -> list[str]:
    simclr = arm in SIMCLR_ARMS
    ref = SIMCLR_AS.get(arm, arm) == "reference"
    d = data[("no_easy" if simclr else "no_easy_pos") if ref else "main"]
    fields = (SIMCLR_HARD if simclr else report.HARD) if ref else report.ATTRS
    split = args.split
    ov = [f"data.train_shards={d['train']}", f"eval.test_shards={d[split]}"]
    if not simclr:  # SimCLR has no text tower: no zero-shot; the pairs are scored after the run, per pair
        ov += ["eval.mmvp_dir=", f"eval.zero_shot_classes={d['zero_shot']}"]
    steps = sc["simclr_steps"] if simclr else sc["steps"]
    ov += ["eval.label_fields=[" + ",".join(fields) + "]", f"train.seed={seed}", f"train.global_batch_size={sc['batch']}",
           f"data.workers={sc['workers']}", f"eval.probe_max_samples={sc['probe']}"]
    ov += arm_overrides(arm, steps, sc["n_train"], args.k, args.group) + args.override
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                 "--master_port", str(29500 + hash(run_dir) % 2000)] if args.nproc > 1 else [sys.executable])
    config = args.simclr_config if simclr else args.config
    redo = ["--redo", "integrate"] if base_arm(arm) else []  # a copy of the trained arm, re-integrated
    return launcher + [os.path.join(ROOT, "launch", "pretrain.py"), "--config", config, "--run-dir", run_dir] + ov + redo


# what an integration arm redoes from its trained arm (integrate, eval, report) or the lock. The
# finished steps' files are copied whole (training checkpoints, TensorBoard logs and embedding parts
# included: a few MB for this tower): the run checks every recorded output of a finished step
# before it skips it (mcl_dist/run/verify.py)
NOT_COPIED = shutil.ignore_patterns(layout.EVAL, layout.INTEGRATED, layout.REPORT, "*.png", layout.LOCK)


def finished(run_dir: str) -> bool:
    return os.path.exists(layout.results_path(run_dir))


def default_store(out: str, custom_out: bool) -> str:
    """Records of the default runs live in the repository (a later session reuses them); those of a
    custom --out stay beside it."""
    return os.path.join(out, "records") if custom_out else os.path.join(ROOT, "docs", "bench", "records",
                                                                      os.path.basename(os.path.normpath(out)))


def finished_runs(out: str, k: int) -> set[tuple[str, int]]:
    """(arm, seed) of every finished run dir in `out` named <arm>_s<seed> with a known arm."""
    found = set()
    for name in os.listdir(out):
        arm, _, seed = name.rpartition("_s")
        if seed.isdigit() and finished(os.path.join(out, name)):
            try:
                parse_arm(arm, k)
            except SystemExit:
                continue
            found.add((arm, int(seed)))
    return found


def to_run(order: list, explicit: list, runs: dict, recorded: dict) -> tuple[list, list]:
    """(to run, skipped as recorded): the wanted runs without a finished run dir, in order, split by
    whether a record exists. A re-integration arm starts from a copy of its trained arm's run dir:
    where only that arm's record survives, the trained arm is queued again first (and so is not
    counted as skipped)."""
    wanted = [r for r in order if (not explicit or r in explicit) and not finished(runs[r])]
    todo, skipped = [r for r in wanted if r not in recorded], [r for r in wanted if r in recorded]
    for arm, seed in list(todo):
        base = (base_arm(arm), seed)
        base_dir = os.path.join(os.path.dirname(runs[(arm, seed)]), f"{base[0]}_s{seed}")
        if base[0] and not finished(base_dir) and base not in todo:
            todo.insert(todo.index((arm, seed)), base)
            runs.setdefault(base, base_dir)
    return todo, [r for r in skipped if r not in todo]


WARM = WarmLauncher()


def start_run(cmd: list[str], env: dict, log_path: str):
    """A one-process run (`python launch/pretrain.py ...`) forks from a process that imported the
    entry point once (mcl_dist/bench/warm_launch.py: ~10 s of imports saved per run); torchrun
    launches, and every run under MCL_BENCH_FRESH=1, start as fresh processes."""
    if cmd[0] == sys.executable and cmd[1].endswith("pretrain.py") and os.environ.get("MCL_BENCH_FRESH") != "1":
        return WARM.start(cmd[2:], ROOT, env, log_path)
    with open(log_path, "a") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_all(jobs: list[tuple[str, int, str, list[str]]], parallel: int, threads: int, out: str,
            on_done=None) -> dict[str, float]:
    """Run the pipeline commands, `parallel` at a time (an integration arm once its trained arm has
    finished: it starts from a copy of it); `on_done(arm, seed, run_dir)` records each run as soon
    as it finishes (a benchmark stopped later keeps it); returns each run's wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    pending, running, times = list(jobs), [], {}
    while pending or running:
        while len(running) < parallel:
            ready = [j for j in pending if not base_arm(j[0]) or finished(os.path.join(out, f"{base_arm(j[0])}_s{j[1]}"))]
            if not ready:
                break
            arm, seed, run_dir, cmd = job = ready[0]
            pending.remove(job)
            if base_arm(arm) and not os.path.exists(layout.manifest_path(run_dir)):
                shutil.copytree(os.path.join(out, f"{base_arm(arm)}_s{seed}"), run_dir, ignore=NOT_COPIED, dirs_exist_ok=True)
            os.makedirs(run_dir, exist_ok=True)
            print(f"[bench] start {arm} seed {seed}  (log {run_dir}.log; {len(pending)} more queued)", flush=True)
            running.append((arm, seed, run_dir, start_run(cmd, env, run_dir + ".log"), time.time()))
        if not running and pending:
            missing = sorted({f"{base_arm(a)}:{sd}" for a, sd, _, _ in pending})
            raise SystemExit(f"[bench] integration arms wait for trained runs that are not finished or queued: "
                             f"{' '.join(missing)} (add them to --runs)")
        time.sleep(2)
        for item in list(running):
            arm, seed, run_dir, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            times[run_dir] = time.time() - t0
            if proc.returncode:
                for _, _, _, p, _ in running:
                    p.kill()
                raise SystemExit(f"[bench] {arm} seed {seed} failed (exit {proc.returncode}); see {run_dir}.log")
            print(f"[bench] done  {arm} seed {seed} in {times[run_dir]:.0f} s", flush=True)
            if on_done is not None:
                on_done(arm, seed, run_dir)
    return times


# -- results -------------------------------------------------------------------------------
def model_scores(res: dict, simclr: bool) -> dict:
    """{attribute: {metric: value}} of one model's eval entry."""
    if simclr:
        return {a: {"probe": res["linear_probe"][a]["top1"], "knn": res["knn"][a]["top1"]}
                for a in report.ATTRS if a in res.get("linear_probe", {})}
    return {a: {"probe": res["linear_probe"][a]["top1"], "zero_shot": res["zero_shot"][a]["top1"],
                "pairs": res.get("mmvp", {}).get("per_category", {}).get(a, float("nan"))}
            for a in report.ATTRS if a in res.get("zero_shot", {})}


def stage_record(run_dir: str, s: int, results: dict, manifest: dict, purity: dict) -> dict:
    """One MCL stage of one run: stop signals, K, label purity, loss at start and end, hard pairs."""
    steps = manifest.get("steps", {})
    out = {"label_purity": purity["labels"],
           "k": steps.get(layout.step_name("kmeans", s), {}).get("outputs", {}).get("k")}
    lab = steps.get(layout.step_name("labels", s), {}).get("outputs", {})
    for key in ("nmi", "split_labels", "split_samples", "labels_before", "labels_after", "survived_labels",
                "survived_samples", "cka_prev"):
        out[key] = lab.get(f"signal/{key}")  # None where a run predates the signal (or stage 1's cka_prev)
    rows = [json.loads(line) for line in open(layout.metrics_path(layout.stage_dir(run_dir, s)))]
    out["loss_start"], out["loss_end"] = rows[0]["loss"], rows[-1]["loss"]
    per = results.get(layout.stage_name(s), {}).get("mmvp", {}).get("per_category", {})
    out["hard_pairs"] = mean([per[a] for a in report.SUPPRESSED if a in per])
    return out


def settings_as_run(run_dir: str, manifest: dict) -> dict:
    """What the run actually ran: its resolved stages, cluster and integration settings, the K each
    stage's k-means used and the code version the pipeline recorded."""
    import yaml

    cfg = yaml.safe_load(open(layout.config_path(run_dir)))
    steps = manifest.get("steps", {})
    ks = [steps.get(layout.step_name("kmeans", s), {}).get("outputs", {}).get("k")
          for s in range(len(cfg.get("stages", [])))]
    return {"stages": cfg.get("stages"), "k_used": ks, "cluster": cfg.get("cluster"), "seed": cfg.get("train", {}).get("seed"),
            "model": {k: v for k, v in cfg.get("model", {}).items() if k.startswith("integration")},
            "code_version": manifest.get("code_version")}


def run_record(run_dir: str, arm: str, seed: int, settings: dict, data: dict | None = None, prov: dict | None = None) -> dict:
    """The few kilobytes of a finished run the report reads (bench_suppression_records.py); with the
    run's data, its pairs scored per pair on both splits (bench_suppression_pairs.py)."""
    from mcl_dist.clustering.cluster_inspect import stage_purity

    results = json.load(open(layout.results_path(run_dir)))
    models = {model: model_scores(res, arm in SIMCLR_ARMS) for model, res in results.items()}
    n_stages = sum(1 for m in results if m.startswith("stage_"))
    scored = pairs.score_run(run_dir, data, n_stages) if data is not None and arm not in SIMCLR_ARMS else None
    if scored:  # the report's "pairs" metric: the test split, the paper's integration (= the pipeline's)
        for model in models:
            per = scored["pairs"]["test"]["integ:equal" if model == "integrated" else model]
            for a in models[model]:
                if a in per:
                    models[model][a]["pairs"] = per[a].count("1") / len(per[a])
    manifest = json.load(open(layout.manifest_path(run_dir)))
    integ = manifest.get("steps", {}).get("integrate", {}).get("outputs", {})
    stages = {}
    for s in range(1, sum(1 for m in results if m.startswith("stage_"))):
        pur = {src: stage_purity(run_dir, s, source=src)["mean_purity"] for src in ("clusters", "labels")}
        stages[s] = {"purity": pur, "signals": stage_record(run_dir, s, results, manifest, pur),
                     "label_stats": manifest.get("steps", {}).get(layout.step_name("labels", s), {}).get("outputs", {})}
    for s, st in stages.items():  # the stage model's own pairs, from the per-pair scores
        if scored:
            per = scored["pairs"]["test"][layout.stage_name(s)]
            st["signals"]["hard_pairs"] = mean([per[a].count("1") / len(per[a]) for a in report.SUPPRESSED if a in per])
    rec = records.make_record(arm, seed, settings, models, {"weights": integ.get("weights"), "cka": integ.get("cka")},
                              stages)
    if scored:
        rec.update(pairs=scored["pairs"], rules=scored["rules"], stage_retrieval=scored["stage_retrieval"])
    rec["provenance"] = {**(prov or {}), "settings_as_run": settings_as_run(run_dir, manifest)}
    return rec


def suppression_check(S: dict, simclr: bool) -> list[str]:
    base, ref = ("simclr_baseline", "simclr_reference") if simclr else ("baseline", "reference")
    if base not in S or ref not in S:
        return []
    metric = "probe" if simclr else "pairs"
    return [f"suppression check, {a}: baseline {metric} {mean(S[base]['integrated'][a][metric]):.2f} vs the same "
            f"model without easy attributes {mean(S[ref]['integrated'][a][metric]):.2f}"
            for a in (SIMCLR_HARD if simclr else report.HARD) if a in S[ref]["integrated"]]


def integration_table(res: dict) -> list[str]:
    """The stage weights the label-free integration choices picked, per seed, with the CKA they read."""
    rows = [[arm, str(r["seed"]), " ".join(f"{w:.2f}" for w in r["weights"]),
             " ".join("—" if c is None else f"{c:.2f}" for c in r["cka"])]
            for arm, recs in res.get("integration", {}).items() for r in recs if r["weights"]]
    if not rows:
        return []
    return ["## Integration weights (label-free; stage 0 first) and each stage's CKA with the earlier stages", "",
            "| arm | seed | weights | CKA |", "|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def other_summaries(args, family: str, suffix: str) -> dict:
    """{family: summary} of the other family: its --other-out's summary.json, or else the records of
    its default runs (same scale, split and T)."""
    out = {}
    for fam, spec in FAMILIES.items():
        if fam == family:
            continue
        if args.other_out:
            path = os.path.join(args.other_out, "summary.json")
            if os.path.exists(path):
                out[fam] = json.load(open(path))
            continue
        store = default_store(spec["out"].format(scale=args.scale, split=args.split) + suffix, custom_out=False)
        recs = sorted(records.load(store).values(), key=lambda r: r["seed"])
        if recs:
            out[fam] = records.merge(recs)
    return out


def protocol_records(args) -> dict:
    """{family: {(arm, seed): record}} for the v2 tables: this invocation's store; the other
    families' committed stores when this one is committed too (docs/bench/records), else only what --other-out's records hold
    (bucketed by the family each record names): a benchmark outside the committed stores never
    mixes with them."""
    out = {fam: {} for fam in FAMILIES}
    out[args.family] = protocol.load_family(args.family, args.store)
    if os.path.abspath(args.store).startswith(os.path.join(ROOT, "docs", "bench", "records") + os.sep):
        out.update({fam: protocol.load_family(fam) for fam in FAMILIES if fam != args.family})
    elif args.other_out and os.path.isdir(os.path.join(args.other_out, "records")):
        for key, rec in protocol.load_family("", os.path.join(args.other_out, "records")).items():
            if rec["settings"].get("family") != args.family:
                out.setdefault(rec["settings"].get("family"), {})[key] = rec
    return out


def baseline_pairs(res: dict, simclr: bool = False) -> str:
    """What the baseline reached on each suppressed attribute here (pairs; SimCLR: linear probe): an
    attribute near 1.00 is not suppressed on this data, and then only counts against an MCL arm that
    loses it."""
    base = res["summary"].get("simclr_baseline" if simclr else "baseline", {}).get("integrated", {})
    metric = "probe" if simclr else "pairs"
    got = [f"{a} {mean(base[a][metric]):.2f}" for a in (SIMCLR_HARD if simclr else report.SUPPRESSED) if a in base]
    return f"baseline {'linear probe' if simclr else 'pair accuracy'} " + ", ".join(got) if got else "no baseline run yet"


def write_report(res: dict, args, sc: dict, times: dict, out: str, simclr: bool) -> tuple[str, list[str]]:
    arms = SIMCLR_ARMS if simclr else list(dict.fromkeys(default_arms(args.family) + args.arms))
    k_of = {arm: parse_arm(arm, args.k)[2] for arm in res["summary"]}
    suffix = "" if sc["steps"] == SCALES[args.scale]["steps"] else f"_T{sc['steps']}"
    top = [] if simclr else report.transfer_lines({**other_summaries(args, args.family, suffix), args.family: res},
                                                  args.recipe_prefix)
    report.use_family(args.family)  # transfer_lines switches between the families
    steps = sc["simclr_steps"] if simclr else sc["steps"]
    md = [f"# Feature-suppression benchmark ({'SimCLR, ' if simclr else ''}family {args.family} "
          f"({FAMILIES[args.family]['name']}), {args.scale} scale, split `{args.split}`)", ""]
    if not simclr:  # the v2 protocol's tables: chosen on the other families' validation pairs, test reported
        recs = protocol_records(args)
        report.use_family(args.family)
        md += ["## Protocol v2 (validation chooses, test reports; 95% intervals over pairs)", ""]
        md += protocol.report_lines(recs) + [""]
        md += [f"- not run yet, family {fam}: {' '.join(miss)}" for fam, miss in protocol.missing_runs(recs).items()] + [""]
        report.use_family(args.family)
        md += ["## Earlier tables (every value below is the test split's; nothing below chose the v2 recipe)", ""]
    md += ["```", *top, "```", ""] if top else []
    md += [f"`{args.simclr_config if simclr else args.config}`; T = {steps} total steps per arm, batch {sc['batch']}, "
           f"{sc['n_train']} training samples, K = {args.k} (unless the arm says), group size {args.group}, seeds "
           f"{args.seeds} (reference: {res['settings']['reference_seeds']}); every cell is one value, or the mean "
           f"followed by each seed's value [seed order as listed]. "
           + (f"suppressed = {', '.join(SIMCLR_HARD)} (chosen before these runs: position is easy for "
              f"this ResNet; {baseline_pairs(res, simclr)})." if simclr else
              f"easy = {', '.join(report.EASY)}; hard = {', '.join(report.HARD)}, of which the baseline suppresses "
              f"{', '.join(report.SUPPRESSED)} (chosen before these runs; {baseline_pairs(res)})."), ""]
    if simclr:
        md += report.simclr_tables(res, arms)
        pngs, final = report.simclr_chart(res, out), report.simclr_final_line(res)
    else:
        md += report.seed_table(res, arms) + report.clip_tables(res, arms) + [""] + report.dilution_table(res, arms) + [""]
        md += integration_table(res)
        pngs, final = report.clip_charts(res, out, arms, args.headline), report.final_lines(res, args.headline, k_of)
        final += stop.stage_count_lines(res)
    md += report.purity_table(res, k_of) + [""] + report.signal_table(res) + [""]
    if times:
        md.append(f"Wall time of the runs started by this invocation: {sum(times.values()) / 60:.1f} run-minutes "
                  f"({len(times)} runs, {args.jobs} at a time).")
    md += [""] + [f"- {c}" for c in suppression_check(res["summary"], simclr)]
    md += ["", "Charts: " + ", ".join(os.path.basename(p) for p in pngs), "", "```", *final, "```", ""]
    return "\n".join(md), top + final


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), default="A", help="A: shapes, B: glyphs")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--objective", choices=("clip", "simclr"), default="clip",
                   help="which arms: the CLIP ones (default) or the unimodal SimCLR ones only (family A)")
    p.add_argument("--config", default=None, help="default: the family's (configs/bench_suppression[_b].yaml)")
    p.add_argument("--simclr-config", default="configs/bench_simclr.yaml")
    p.add_argument("--out", default=None, help="default: the family's runs/bench_v2_<family>_<scale> "
                                               "(SimCLR: runs/bench_v2_simclr_<scale>_<split>_T<steps>)")
    p.add_argument("--other-out", default=None, help="the other family's --out, for the transfer lines")
    p.add_argument("--data-dir", default=None, help="default: the family's data/bench_suppression[_b]_<scale>")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="evaluation split; choose settings on val, report test")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reference-seeds", type=int, nargs="+", default=None,
                   help="seeds of the no-easy reference (default: the first seed only)")
    p.add_argument("--arms", nargs="+", default=None,
                   help="default: every arm of --objective and --family, most decisive first (bench_suppression_arms.py)")
    p.add_argument("--runs", nargs="+", default=None, metavar="ARM:SEED",
                   help="exact runs in this order (e.g. baseline:0 mcl4_prev:0 baseline:1), instead of "
                        "--arms x --seeds; the report covers every finished run of --arms x --seeds too")
    p.add_argument("--headline", default=HEADLINE, help="the MCL arm of the final ratio line")
    p.add_argument("--recipe-prefix", default=RECIPE_PREFIX,
                   help="the transfer lines choose the recipe among the arms whose names start with this")
    p.add_argument("--steps", type=int, default=None, help="total steps T per CLIP arm (default: the scale's)")
    p.add_argument("--simclr-steps", type=int, default=None, help="total steps T per SimCLR arm (default: the scale's)")
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--group", type=int, default=None, help="stages' group_size")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun when > 1)")
    p.add_argument("--override", nargs="*", default=[], help="extra config overrides for every run")
    p.add_argument("--records", default=None,
                   help="where each finished run's record is kept and reused (default: docs/bench/records/<out name> "
                        "for the default --out, committed; <out>/records for a given --out)")
    p.add_argument("--report-only", action="store_true", help="run nothing: report the finished runs and records")
    args = p.parse_args(argv)
    fam = FAMILIES[args.family]
    report.use_family(args.family)
    if args.arms is None:
        args.arms = SIMCLR_ARMS if args.objective == "simclr" else default_arms(args.family)
    simclr = all(a in SIMCLR_ARMS for a in args.arms)
    if not simclr and any(a in SIMCLR_ARMS for a in args.arms):
        p.error("run the CLIP arms and the SimCLR arms separately (--objective simclr)")
    if simclr and args.family != "A":
        p.error("the SimCLR arms run on family A only")
    sc = dict(SCALES[args.scale])
    default_steps = sc["steps"]
    sc["steps"], sc["simclr_steps"] = args.steps or sc["steps"], args.simclr_steps or sc["simclr_steps"]
    args.k, args.group = args.k or sc["k"], args.group or sc["group"]
    args.jobs = args.jobs or sc["jobs"]
    args.config = args.config or fam["config"]
    for arm in args.arms:
        parse_arm(arm, args.k)  # unknown names stop here, before any run
    if simclr:  # T in the name: runs of another T (the earlier sweep's T = 240) are never taken for these
        out = args.out or os.path.join("runs", f"bench_v2_simclr_{args.scale}_{args.split}_T{sc['simclr_steps']}")
    else:
        out = args.out or (fam["out"].format(scale=args.scale, split=args.split)
                           + ("" if sc["steps"] == default_steps else f"_T{sc['steps']}"))
    data_dir = args.data_dir or fam["data"].format(scale=args.scale)
    store = args.store = args.records or default_store(out, custom_out=bool(args.out))
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    rec_settings = {**sc, "protocol": protocol.PROTOCOL, "family": args.family, "scale": args.scale, "split": args.split, "k": args.k,
                    "group": args.group, "config": args.simclr_config if simclr else args.config,
                    "steps": sc["simclr_steps"] if simclr else sc["steps"]}
    recorded = records.load(store, rec_settings)

    ref_seeds = args.reference_seeds if args.reference_seeds is not None else args.seeds[:1]
    order = planned_runs(args.arms, args.seeds, ref_seeds)
    explicit = []
    if args.runs:
        explicit = [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs]
        for arm, _ in explicit:
            parse_arm(arm, args.k)
        order = explicit + [r for r in order if r not in explicit]
        args.arms = list(dict.fromkeys(args.arms + [a for a, _ in explicit]))
    runs = {(arm, seed): os.path.join(out, f"{arm}_s{seed}") for arm, seed in order}
    todo, skipped = ([], []) if args.report_only else to_run(order, explicit, runs, recorded)
    if skipped:
        print(f"[bench] {len(skipped)} runs skipped, recorded in {store} (to measure them again: --records with an "
              f"empty directory)", flush=True)
    # the report covers every recorded or finished run of this store and --out, asked for or not; a
    # re-integrated arm after its trained arm
    extra = set(recorded) | finished_runs(out, args.k)
    for arm, seed in sorted(extra, key=lambda r: (r[1], base_arm(r[0]) or r[0], bool(base_arm(r[0])))):
        runs.setdefault((arm, seed), os.path.join(out, f"{arm}_s{seed}"))
    args.arms = list(dict.fromkeys(args.arms + [arm for arm, _ in runs]))
    jobs, data, prov = [], None, {}
    if todo or any(finished(d) for d in runs.values()):  # a finished run's pairs are scored on this data
        data = make_data(data_dir, sc, args.family, simclr)
        prov = {**pairs.provenance(ROOT), "data_digest": data_digest(data), "data_dir": os.path.abspath(data_dir)}
        print(f"[bench] data ready in {time.time() - t0:.0f} s under {data_dir} (digest {prov['data_digest'][:12]})",
              flush=True)
        jobs = [(arm, seed, runs[(arm, seed)], run_command(arm, seed, runs[(arm, seed)], data, args, sc))
                for arm, seed in todo]

    def record(arm: str, seed: int, run_dir: str) -> None:  # a finished run dir is the truth; its record is rewritten
        recorded[(arm, seed)] = run_record(run_dir, arm, seed, rec_settings, data and data["main"], prov)
        records.save(recorded[(arm, seed)], store)

    times = run_all(jobs, args.jobs, args.threads or sc["threads"], out, on_done=record)
    for (arm, seed), run_dir in runs.items():
        if finished(run_dir) and run_dir not in times:
            record(arm, seed, run_dir)
    # seed order within each arm (runs finish in any order; every per-seed list and line reads 0 1 2 ...)
    res = records.merge([recorded[r] for r in sorted(runs, key=lambda r: r[1]) if r in recorded])
    print(f"[bench] {len(recorded)} run records in {store}", flush=True)
    res["scale"], res["family"] = args.scale, args.family
    res["settings"] = {**sc, "k": args.k, "group": args.group, "seeds": args.seeds, "split": args.split,
                       "reference_seeds": ref_seeds, "config": args.simclr_config if simclr else args.config}
    from mcl_dist.core.files import write_json, write_text

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
