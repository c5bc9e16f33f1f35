"""The GPU check's report: the JSON's fixed schema, the targets' verdicts and the printed table
(mcl_dist/bench/gpu_check.py makes the numbers)."""
from __future__ import annotations

# (key in the JSON, how to read it, comparison, target): the issue's targets
TARGETS = [("train_ratio", ("train", "ratio"), ">=", 1.0), ("stage1_ratio", ("stage1", "ratio"), ">=", 0.95),
           ("kmeans_time_ratio", ("kmeans", "time_ratio"), "<=", 1.0),
           ("kmeans_inertia_ratio", ("kmeans", "inertia_ratio"), "<=", 1.001),
           ("kmeans_bandwidth_fraction", ("kmeans", "bandwidth_fraction"), ">=", 0.5)]
SCHEMA = {  # every field the JSON always has (None where a part failed or does not apply)
    "collectives": ["ok", "all_gather_ok", "all_reduce_ok", "allreduce_busbw_gbs", "allreduce_mb", "loss_equal",
                    "loss_gathered", "loss_single", "loss_abs_diff", "grad_max_abs_diff", "loss_tolerance",
                    "peak_mem_gb"],
    "train": ["model", "global_batch", "steps", "warmup_steps", "precision", "samples", "ours_samples_per_s",
              "open_clip_samples_per_s", "ratio", "ours_peak_mem_gb", "open_clip_peak_mem_gb"],
    "stage1": ["model", "global_batch", "steps", "warmup_steps", "precision", "samples", "k", "group_size",
               "stage0_samples_per_s", "stage1_samples_per_s", "ratio", "peak_mem_gb"],
    "embed": ["pipeline_samples_per_s_per_gpu", "pipeline_samples", "pipeline_peak_mem_gb",
              "model_samples_per_s_per_gpu", "model_peak_mem_gb"],
    "kmeans": ["n", "d", "k", "iters", "device_name", "ours_s", "ours_inertia", "ours_peak_mem_gb", "faiss",
               "faiss_error", "faiss_s", "faiss_inertia", "faiss_peak_mem_gb", "faiss_device", "time_ratio",
               "cross_device_time_ratio", "inertia_ratio",
               "bandwidth_gbs", "copy_bandwidth_gbs", "peak_bandwidth_gbs", "peak_source", "bandwidth_fraction"],
}


def verdicts(result: dict) -> dict:
    out = {}
    for name, (part, key), op, target in TARGETS:
        value = (result.get(part) or {}).get(key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "target": target, "op": op, "met": met}
    return out


def _f(v, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def table(r: dict) -> str:
    c, t, s, e, k = (r[p] for p in ("collectives", "train", "stage1", "embed", "kmeans"))
    tg = r["targets"]

    def verdict(name):
        met = tg[name]["met"]
        return "-" if met is None else ("PASS" if met else "MISS") + ("" if r["targets_judged"] else " (cpu)")

    def check(ok):
        return "-" if ok is None else ("ok" if ok else "FAIL")

    rows = [
        ("1 all_gather / all_reduce", f"busbw {_f(c['allreduce_busbw_gbs'])} GB/s",
         "values exact", check(c["all_gather_ok"] and c["all_reduce_ok"] if c["all_gather_ok"] is not None else None),
         _f(c["peak_mem_gb"])),
        ("1 gathered loss = single", f"|dloss| {_f(c['loss_abs_diff'])}, |dgrad| {_f(c['grad_max_abs_diff'])}",
         f"<= {_f(c['loss_tolerance'])}", check(c["loss_equal"]), ""),
        ("2 ours / open_clip_train", f"{_f(t['ratio'], '.3f')} ({_f(t['ours_samples_per_s'], '.0f')} vs "
         f"{_f(t['open_clip_samples_per_s'], '.0f')} samples/s)", ">= 1.0", verdict("train_ratio"),
         f"{_f(t['ours_peak_mem_gb'])} / {_f(t['open_clip_peak_mem_gb'])}"),
        ("3 stage 1 / stage 0", f"{_f(s['ratio'], '.3f')} ({_f(s['stage1_samples_per_s'], '.0f')} vs "
         f"{_f(s['stage0_samples_per_s'], '.0f')} samples/s)", ">= 0.95", verdict("stage1_ratio"), _f(s["peak_mem_gb"])),
        ("4 embed samples/s per GPU", f"pipeline {_f(e['pipeline_samples_per_s_per_gpu'], '.0f')}, "
         f"model alone {_f(e['model_samples_per_s_per_gpu'], '.0f')}", "", "",
         f"{_f(e['pipeline_peak_mem_gb'])} / {_f(e['model_peak_mem_gb'])}"),
        ("4 k-means time ours/faiss", f"{_f(k['time_ratio'] or k['cross_device_time_ratio'], '.3f')} "
         f"({_f(k['ours_s'], '.3g')} s vs "
         f"{_f(k['faiss_s'], '.3g')} s, {k['faiss'] or k['faiss_error'] or 'no faiss'})", "<= 1.0",
         verdict("kmeans_time_ratio"),
         f"{_f(k['ours_peak_mem_gb'])} / {_f(k['faiss_peak_mem_gb'])}"),
        ("4 k-means inertia ours/faiss", _f(k["inertia_ratio"], ".6f"), "<= 1.001", verdict("kmeans_inertia_ratio"), ""),
        ("4 k-means bandwidth", f"{_f(k['bandwidth_gbs'], '.4g')} GB/s = {_f(k['bandwidth_fraction'], '.1%')} of "
         f"{_f(k['peak_bandwidth_gbs'], '.4g')} GB/s ({k['peak_source'] or '-'})", ">= 50%",
         verdict("kmeans_bandwidth_fraction"), ""),
    ]
    head = (f"gpu_check ({r['mode']}): {r['world_size']} x {r['device']}, {r['backend']}, torch {r['torch']}, "
            f"model {t['model'] or '-'}, global batch {t['global_batch'] or '-'}, {r['seconds']:.0f} s")
    widths = [30, 62, 14, 12]
    lines = [head, "".join(h.ljust(w) for h, w in zip(("part", "value", "target", "verdict"), widths)) + "peak mem GiB"]
    lines += ["".join(str(x).ljust(w) for x, w in zip(row, widths)) + row[4] for row in rows]
    lines.append("seconds per part: " + ", ".join(f"{p} {v}" for p, v in r["part_seconds"].items()))
    lines += [f"error: {err.splitlines()[0][:200]}" for err in r["errors"]]
    return "\n".join(lines)


def finish(result: dict) -> dict:
    for part, keys in SCHEMA.items():
        got = result.get(part) or {}
        result[part] = {key: got.get(key) for key in keys}
    result["targets"] = verdicts(result)
    result["ok"] = not result["errors"] and bool(result["collectives"]["ok"])
    return result
