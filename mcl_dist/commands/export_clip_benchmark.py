"""Write labelled shards in clip_benchmark's webdataset layout, one dataset per label field:

    mcl-export-clip-benchmark runs/demo --out cb_data                     # a run's eval.test_shards
    mcl-export-clip-benchmark --shards 'test-{0..3}.tar' --label-field color --classnames names.json --out cb_data

writes, for each label field F (clip_benchmark's `build_wds_dataset` reads exactly these):

    cb_data/F/test/0.tar ... (N-1).tar   image + `cls` (the class index) per sample
    cb_data/F/test/nshards.txt           N
    cb_data/F/classnames.txt             one class name a line
    cb_data/F/zeroshot_classification_templates.txt   our '{}' templates as clip_benchmark's '{c}'

then score with `python -m mcl_dist.eval.clip_benchmark eval ... --dataset wds/F --dataset_root 'cb_data/{dataset}'`.
clip_benchmark gives each DataLoader worker whole shards, and a worker without one fails with "No
samples found", so N (`--nshards`, default 4 = clip_benchmark's default --num_workers) must be at
least the --num_workers it runs with. Each field's folder is written beside its final name and
renamed into place, so an interrupted export leaves no half-written dataset.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Optional

import braceexpand
import webdataset as wds
import yaml

from mcl_dist.config.schema import saved_path
from mcl_dist.core import layout
from mcl_dist.data.shards import expand_urls
from mcl_dist.data.streaming import ErrorLog, raw_samples
from mcl_dist.eval.zero_shot import _raw_label, label_indices, load_classnames

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # what clip_benchmark's wds reader decodes


def _find(path: str, run_dir: str, anchor: str) -> str:
    """A path saved in the run's config.yaml, resolved where the run resolved it (its `anchor`)."""
    if anchor:
        return saved_path(path, anchor)
    # a run saved before config.yaml recorded its anchor: beside the run first, this directory last
    parent = os.path.dirname(os.path.abspath(run_dir))
    for base in (parent, os.path.dirname(parent), ""):
        candidate = os.path.join(base, path)
        if os.path.exists(next(iter(braceexpand.braceexpand(candidate)))):
            return candidate
    return path


def from_run(run_dir: str) -> tuple[str, list[str], dict]:
    """(test shards, label fields, {field: (classnames, templates)}) from <run_dir>/config.yaml."""
    path = layout.config_path(run_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found; give a run directory, or --shards and --label-field")
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    ev, anchor = saved.get("eval") or {}, saved.get("anchor") or ""
    if not ev.get("test_shards") or not ev.get("label_fields"):
        raise ValueError(f"{path}: eval.test_shards and eval.label_fields are not set; give --shards and --label-field")
    classes = {}
    if ev.get("zero_shot_classes"):
        with open(_find(ev["zero_shot_classes"], run_dir, anchor)) as f:
            classes = {k: (v["classnames"], v.get("templates")) for k, v in json.load(f).items()}
    shards = "::".join(_find(p, run_dir, anchor) for p in str(ev["test_shards"]).split("::"))
    return shards, list(ev["label_fields"]), classes


def export(shards: str, fields: list[str], classes: dict, out: str, nshards: int = 4) -> dict[str, int]:
    """Write one clip_benchmark dataset per field under `out`; returns samples written per field."""
    missing = [f for f in fields if f not in classes]
    if missing:
        raise ValueError(f"no class names for label field(s) {', '.join(missing)}; give --classnames")
    tmp = {f: os.path.join(out, f".{f}.tmp") for f in fields}
    for d in tmp.values():
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.join(d, "test"))
    writers = {f: [wds.TarWriter(os.path.join(tmp[f], "test", f"{i}.tar")) for i in range(nshards)] for f in fields}
    counts = dict.fromkeys(fields, 0)
    try:
        for raw in raw_samples(expand_urls(shards, key="--shards"), ErrorLog()):
            ext = next((e for e in IMAGE_EXTS if e in raw), None)
            if ext is None:
                continue
            for f in fields:
                (y,) = label_indices([_raw_label(raw, f)], classes[f][0], f"{raw['__url__']} ({raw['__key__']})")
                if y is not None:
                    writers[f][counts[f] % nshards].write({"__key__": raw["__key__"], ext: raw[ext], "cls": str(y)})
                    counts[f] += 1
    finally:
        for ws in writers.values():
            for w in ws:
                w.close()
    for f in fields:
        if counts[f] < nshards:
            raise ValueError(f"label field {f}: {counts[f]} labelled samples for {nshards} shards; lower --nshards "
                             f"(and clip_benchmark's --num_workers with it)")
        _write_meta(tmp[f], nshards, *classes[f])
        final = os.path.join(out, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp[f], final)
    return counts


def _write_meta(d: str, nshards: int, classnames: list[str], templates: Optional[list[str]]) -> None:
    templates = templates or ["a photo of a {}."]
    with open(os.path.join(d, "test", "nshards.txt"), "w") as f:
        f.write(f"{nshards}\n")
    with open(os.path.join(d, "classnames.txt"), "w") as f:
        f.write("".join(f"{c}\n" for c in classnames))
    with open(os.path.join(d, "zeroshot_classification_templates.txt"), "w") as f:
        f.write("".join(t.replace("{}", "{c}") + "\n" for t in templates))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcl-export-clip-benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a run directory: its eval.test_shards, label fields and class names")
    p.add_argument("--shards", help="labelled shards instead of a run's (brace-expanded, '::'-joined)")
    p.add_argument("--label-field", action="append", default=[], help="field of {key}.json ('.cls': the .cls member)")
    p.add_argument("--classnames", help="class names: a text file, or JSON list / {classnames, templates}")
    p.add_argument("--out", required=True, help="output folder; one dataset per label field inside")
    p.add_argument("--nshards", type=int, default=4, help="shards per dataset, >= clip_benchmark's --num_workers")
    args = p.parse_args(argv)
    try:
        if args.shards:
            if not args.label_field or not args.classnames:
                raise ValueError("--shards needs --label-field and --classnames")
            names, templates = load_classnames(args.classnames)
            shards, fields, classes = args.shards, args.label_field, {f: (names, templates) for f in args.label_field}
        elif args.run_dir:
            shards, fields, classes = from_run(args.run_dir)
            fields = args.label_field or fields
        else:
            raise ValueError("give a run directory or --shards")
        if args.nshards < 1:
            raise ValueError(f"--nshards must be >= 1, got {args.nshards}")
        counts = export(shards, fields, classes, args.out, args.nshards)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f, n in counts.items():
        print(f"{os.path.join(args.out, f)}: {n} samples in {args.nshards} shards, {len(classes[f][0])} classes")
    # the run's own scores are fp32, so --no_amp (clip_benchmark's AMP default is bf16 autocast on CPU)
    model = layout.integrated_path(args.run_dir or "RUN")
    print(f"score with: python -m mcl_dist.eval.clip_benchmark eval --model {model} "
          f"--dataset {' '.join('wds/' + f for f in counts)} --dataset_root '{args.out}/{{dataset}}' "
          f"--task zeroshot_classification --no_amp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
