"""One record per finished benchmark run, kept where a later session finds it.

A run directory (runs/..., git-ignored, gigabytes of shards and checkpoints across the arms) does not
outlive the machine it ran on; the report only needs a few kilobytes of it. So every finished run
leaves `<records>/<arm>_s<seed>.json`: its evaluation per model, its integration weights and per MCL
stage the label purity, label statistics and stop signals, with the settings it ran under. The
default store of the benchmark's default runs is committed (docs/bench/records/<out name>), so a
later session skips every run recorded there and reports from the records and its own new runs.

    record = {"arm", "seed", "settings": {...},
              "models": {model: {attr: {metric: value}}},
              "integration": {"weights", "cka"},
              "stages": {stage: {"purity": {source: {attr: value}}, "label_stats": {...}, "signals": {...}}}}

`merge` turns records into the report's per-arm, per-seed lists (the shape `collect` always had);
`split_summary` turns an old summary.json (from before records existed) back into records.
"""
from __future__ import annotations

import glob
import os

# the settings a record must share with the invocation that reuses it (anything else, e.g. the
# number of runs at a time, does not change a run's results); steps is the T of the run's objective
SAME = ("protocol", "family", "scale", "split", "steps", "batch", "n_train", "k", "group", "config", "mmvp_pairs",
        "pair_sets")


def record_path(store: str, arm: str, seed: int) -> str:
    return os.path.join(store, f"{arm}_s{seed}.json")


def make_record(arm: str, seed: int, settings: dict, models: dict, integration: dict, stages: dict) -> dict:
    return {"arm": arm, "seed": seed, "settings": {k: settings.get(k) for k in SAME}, "models": models,
            "integration": integration, "stages": {str(s): v for s, v in stages.items()}}


def save(record: dict, store: str) -> str:
    from mcl_dist.core.files import write_json

    path = record_path(store, record["arm"], record["seed"])
    write_json(record, path)  # atomic: a crash never leaves half a record to be trusted later
    return path


def load(store: str, settings: dict | None = None) -> dict:
    """{(arm, seed): record} of every record in `store`; a record made under other settings than
    `settings` (when given) stops the benchmark with the file and the setting named (reusing it
    would mix two experiments)."""
    from mcl_dist.core.files import read_json

    out = {}
    for path in sorted(glob.glob(os.path.join(store, "*.json"))):
        rec = read_json(path)
        if not isinstance(rec, dict) or not {"arm", "seed", "settings", "models"} <= set(rec):
            raise SystemExit(f"[bench] {path}: not a benchmark run record (needs arm, seed, settings, models)")
        diff = [f"{k} {rec['settings'].get(k)!r} here, {settings.get(k)!r} now" for k in SAME
                if settings is not None and rec["settings"].get(k) != settings.get(k)]
        if diff:
            raise SystemExit(f"[bench] {path}: recorded under other settings ({'; '.join(diff)}); "
                             f"give this invocation its own --out (or --records)")
        out[(rec["arm"], rec["seed"])] = rec
    return out


def merge(records: list[dict]) -> dict:
    """The report's lists, each over an arm's seeds in the order of `records`: summary[arm][model]
    [attr][metric], purity[arm][stage][source][attr], label_stats[arm][stage], stages[arm][stage]
    [field], seeds[arm], integration[arm] (stage numbers are ints, as the report expects)."""
    res = {key: {} for key in ("summary", "purity", "label_stats", "stages", "seeds", "integration")}
    for rec in records:
        arm = rec["arm"]
        res["seeds"].setdefault(arm, []).append(rec["seed"])
        for model, attrs in rec["models"].items():
            for a, metrics in attrs.items():
                for metric, v in metrics.items():
                    res["summary"].setdefault(arm, {}).setdefault(model, {}).setdefault(a, {}).setdefault(
                        metric, []).append(v)
        res["integration"].setdefault(arm, []).append({"seed": rec["seed"], **rec["integration"]})
        for s, st in sorted(rec["stages"].items(), key=lambda kv: int(kv[0])):
            s = int(s)
            for src, per_attr in st["purity"].items():
                for a, v in per_attr.items():
                    res["purity"].setdefault(arm, {}).setdefault(s, {}).setdefault(src, {}).setdefault(a, []).append(v)
            res["label_stats"].setdefault(arm, {}).setdefault(s, []).append(st["label_stats"])
            for key, v in st["signals"].items():
                res["stages"].setdefault(arm, {}).setdefault(s, {}).setdefault(key, []).append(v)
    return res


def split_summary(summary: dict) -> list[dict]:
    """The records an old summary.json was merged from (its lists are over summary["seeds"][arm])."""
    settings = {**summary["settings"], "family": summary.get("family"), "scale": summary.get("scale")}
    out = []
    for arm, seeds in summary["seeds"].items():
        for i, seed in enumerate(seeds):
            models = {m: {a: {metric: v[i] for metric, v in metrics.items()} for a, metrics in attrs.items()}
                      for m, attrs in summary["summary"][arm].items()}
            integ = summary["integration"][arm][i]
            stages = {}
            for s in summary.get("stages", {}).get(arm, {}):
                stages[s] = {"purity": {src: {a: v[i] for a, v in per_attr.items()}
                                        for src, per_attr in summary["purity"][arm][s].items()},
                             "label_stats": summary["label_stats"][arm][s][i],
                             "signals": {k: v[i] for k, v in summary["stages"][arm][s].items()}}
            out.append(make_record(arm, seed, settings, models, {"weights": integ["weights"], "cka": integ["cka"]},
                                   stages))
    return out


if __name__ == "__main__":  # python tools/bench_suppression_records.py OLD_SUMMARY.json STORE
    import sys

    from mcl_dist.core.files import read_json

    if len(sys.argv) != 3:
        raise SystemExit("usage: python tools/bench_suppression_records.py OLD_SUMMARY.json STORE_DIR")
    for rec in split_summary(read_json(sys.argv[1])):
        print(save(rec, sys.argv[2]))
