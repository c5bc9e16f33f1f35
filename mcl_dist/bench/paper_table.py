"""The table paper_check prints and writes: one markdown table per part, from its JSON."""
from __future__ import annotations


def _f(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    s = sorted(values)
    return f"{fmt.format(s[len(s) // 2])} ({fmt.format(s[0])}-{fmt.format(s[-1])})"


def _train_rows(train: dict) -> list[str]:
    rows = ["| recipe | batch/GPU | timed steps ours / theirs | ours samples/s | open_clip_train samples/s | "
            "ratio min / median / max | MFU ours (data sheet / measured matmul) | model-only samples/s (MFU) | "
            "data wait ours / theirs | peak GiB ours / theirs / model-only | GFLOP/sample |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, t in train.items():
        if not t:
            rows.append(f"| {name} | failed (see errors) | | | | | | | | | |")
            continue
        ours, oc, ratio = t["ours"], t["open_clip_train"], t["ratio"]
        mfu = f"{_spread(ours.get('mfu', []), '{:.1%}')} / {_spread(ours.get('mfu_of_measured_matmul', []), '{:.1%}')}"
        steps = f"{'/'.join(map(str, sorted(set(ours['timed_steps']))))} / {'/'.join(map(str, sorted(set(oc['timed_steps']))))}"
        rows.append(
            f"| {name} ({t['recipe']['model']}, {t['recipe']['precision']}) | {t['batch_per_gpu']} | {steps} | "
            f"{_spread(ours['samples_per_s'])} | {_spread(oc['samples_per_s'])} | "
            f"{ratio['min']:.2f} / {ratio['median']:.2f} / {ratio['max']:.2f} | {mfu} | "
            f"{_f(t['model_only_samples_per_s'])} ({_f(t.get('model_only_mfu'), '{:.1%}')}) | "
            f"{_spread(ours['data_wait_share'], '{:.1%}')} / {_spread(oc['data_wait_share'], '{:.1%}')} | "
            f"{_f(ours['peak_mem_gb'])} / {_f(oc['peak_mem_gb'])} / {_f(t.get('model_only_peak_mem_gb'))} | "
            f"{t['flops']['per_sample'] / 1e9:.2f} |")
        notes = [t.get("batch_note", "")] + ours.get("notes", []) + oc.get("notes", [])
        if any(n and n != "the paper's per-GPU batch" for n in notes):
            rows.append(f"| {name}: {'; '.join(n for n in notes if n)} | | | | | | | | | | |")
    return rows


def _kmeans_rows(km: dict) -> list[str]:
    rows = ["| k-means | ours s | torch Lloyd s | faiss | faiss s | ours / best same-device peer | "
            "objective ours/faiss, ours/Lloyd | GB/s moved (of copy) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in km.values():
        bw = f"{_f(r.get('bandwidth_gbs'), '{:.0f}')} ({_f(r.get('bandwidth_fraction'), '{:.0%}')})"
        best = f"{_f(r.get('best_peer_time_ratio'), '{:.3f}')} ({r.get('best_peer', '-')})"
        rows.append(f"| {r['n']:,} x {r['d']}, K {r['k']}, {r['iters']} it | {r['ours_s']:.2f} | "
                    f"{_f(r.get('torch_lloyd_s'), '{:.2f}')} | {r.get('faiss') or '-'} | {_f(r.get('faiss_s'), '{:.2f}')} | "
                    f"{best} | {_f(r.get('objective_ratio'), '{:.6f}')}, {_f(r.get('torch_lloyd_objective_ratio'), '{:.6f}')} "
                    f"| {bw} |")
    return rows


def _preflight_line(p: dict) -> str:
    keys = ("python", "torch", "torch_cuda", "driver", "open_clip_torch", "webdataset", "faiss")
    return "preflight: " + ", ".join(f"{k} {p.get(k) or '-'}" for k in keys) + \
        f"; tiny step {_f(p.get('tiny_step_samples_per_s'), '{:.0f}')} samples/s"


def table(res: dict) -> str:
    lines = [f"paper_check ({res['mode']}): {res['device']}, torch {res['torch']}, {res['cpu_cores']} CPU cores, "
             f"{res['workers']} loader workers, {res.get('seconds', 0):.0f} s"
             + (f" of a {res['deadline_s']:.0f} s deadline" if res.get("deadline_s") else "")]
    if res.get("preflight"):
        lines.append(_preflight_line(res["preflight"]))
    c = res.get("ceilings") or {}
    lines.append(f"ceilings: matmul {_f(c.get('matmul_tflops'))} TFLOP/s ({c.get('matmul_dtype', '-')}; data sheet "
                 f"{_f(c.get('peak_bf16_tflops_datasheet'))}), device copy {_f(c.get('copy_gbs'), '{:.0f}')} GB/s")
    ld = res.get("loader") or {}
    if ld:
        lines.append(f"loader (ViT-B-32/L-14 transform, 224 px): 256 px {ld['jpeg256_per_core']:.0f} samples/s per core, "
                     f"512 px {ld['jpeg512_per_core']:.0f}; {ld['jpeg256_workers']} workers "
                     f"{ld['jpeg256_all_workers']:.0f}; workers needed for anchors {ld['workers_needed_anchors']}")
    lines += [""] + _train_rows(res.get("train") or {})
    for model, e in (res.get("embed") or {}).items():
        lines.append(f"embed {model}: model fp32 {e['model_fp32_samples_per_s']:.0f}, bf16 {e['model_bf16_samples_per_s']:.0f}, "
                     f"pipeline bf16 {e['pipeline_bf16_samples_per_s']:.0f} samples/s "
                     f"({e['pipeline_over_model_bf16']:.2f} of the model-only bf16 rate)")
    if res.get("kmeans"):
        lines += [""] + _kmeans_rows(res["kmeans"])
    lines += [f"part seconds: {res['part_seconds']}"] + [f"error: {e}" for e in res["errors"]]
    if res.get("resumed_parts"):
        lines.append(f"kept from {res['resumed_from']}: {', '.join(res['resumed_parts'])}")
    if res.get("skipped"):
        reasons = res.get("skip_reasons") or {}
        lines.append("skipped: " + "; ".join(f"{p} ({reasons.get(p, 'time')})" for p in res["skipped"]))
        lines.append(f"to run them: python -m mcl_dist.bench.paper_check --resume THIS.json "
                     f"--parts '{','.join(res['skipped'])}' --out NEXT.json")
    return "\n".join(lines)
