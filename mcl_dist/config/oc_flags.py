"""open_clip_train's training flags on `mcl-pretrain` / `launch/pretrain.py`, with open_clip's meanings.

    torchrun --standalone --nproc_per_node 8 launch/pretrain.py --config configs/demo.yaml --batch-size 32 --lr 1e-3

Each flag becomes a dotted config override (README "open_clip_train flags" has the table); dotted
overrides given as well come after them and win. `--batch-size` is per GPU, as in open_clip:
train.global_batch_size = batch size x world size x train.accum_freq. `--name` / `--logs` pick the
run directory (<logs>/<name>; logs default runs). Flags with no mapping are refused all at once,
each with what to use instead (a flag, a config key, or why to drop it).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import typing
from typing import Any, Callable, Optional

from mcl_dist.config.key_synonyms import SYNONYMS
from mcl_dist.config.origins import Override
from mcl_dist.config.schema import Config, ConfigError, StageConfig

# flag -> (config key, type); type None = a switch (open_clip's store_true) that sets the key true
FLAGS: dict[str, tuple[str, Any]] = {
    "--batch-size": ("train.global_batch_size", int),  # per GPU: scaled in to_overrides
    "--accum-freq": ("train.accum_freq", int),
    "--lr": ("train.lr", float),
    "--wd": ("train.wd", float),
    "--beta1": ("train.beta1", float),
    "--beta2": ("train.beta2", float),
    "--eps": ("train.eps", float),
    "--warmup": ("train.warmup_steps", int),
    "--epochs": ("train.epochs", float),
    "--grad-clip-norm": ("train.grad_clip_norm", float),
    "--precision": ("train.precision", str),
    "--lr-scheduler": ("train.lr_scheduler", str),
    "--local-loss": ("train.local_loss", None),
    "--gather-with-grad": ("train.gather_with_grad", None),
    "--seed": ("train.seed", int),
    "--report-to": ("train.report_to", str),
    "--workers": ("data.workers", int),
    "--lock-text": ("model.lock_text", None),
    "--lock-text-unlocked-layers": ("model.lock_text_unlocked_layers", int),
    "--lock-image": ("model.lock_image", None),
    "--lock-image-unlocked-groups": ("model.lock_image_unlocked_groups", int),
    "--force-quick-gelu": ("model.force_quick_gelu", None),
    "--grad-checkpointing": ("model.grad_checkpointing", None),
    "--train-data": ("data.train_shards", str),  # webdataset shards (img2dataset --output_format webdataset) or a CSV
    "--dataset-type": ("data.dataset_type", str),  # webdataset | csv | auto (data/dataset_types.py)
    "--csv-img-key": ("data.csv_img_key", str),
    "--csv-caption-key": ("data.csv_caption_key", str),
    "--csv-separator": ("data.csv_separator", str),  # quoted for YAML: a tab, "," or "|" stay themselves
    "--train-num-samples": ("data.num_samples", int),
    "--model": ("model.name", str),
    "--pretrained": ("model.pretrained", str),
    "--log-every-n-steps": ("train.log_every", int),
}
# open_clip_train (and the public MCL code) flags with no config key here, and what to do instead
INSTEAD: dict[str, str] = {
    "--MCL-label-path": "drop it: every stage's labels come from the run's own k-means (stages.N.k)",
    "--zeroshot-frequency": "drop it: every stage is evaluated when it ends (eval.enabled, eval.test_shards, "
                            "eval.zero_shot_classes)",
    "--ddp-static-graph": "drop it: DDP's static-graph speed-up is not exposed (it does not change results)",
    "--val-data": "drop it: eval.test_shards takes labelled shards for zero-shot and linear probe",
    "--imagenet-val": "drop it: eval.test_shards with eval.zero_shot_classes scores zero-shot",
    "--resume": "drop it: rerunning the same command resumes from the run directory",
    "--dist-url": "drop it: torchrun's rendezvous (launch/slurm/*.sbatch) sets it",
    "--save-frequency": "use train.checkpoint_every=STEPS (optimizer steps, not epochs)",
}
RUN_DIR_FLAGS = ("--name", "--logs")  # -> the run directory <logs>/<name>
PRECISIONS = {"amp_bfloat16": "amp_bf16"}  # open_clip's second spelling


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("open_clip_train flags (each sets the config key in brackets; see README)")
    for flag, (key, tp) in FLAGS.items():
        if tp is None:
            g.add_argument(flag, action="store_true", default=None, help=f"[{key}=true]")
        else:
            g.add_argument(flag, type=str, default=None, metavar=tp.__name__.upper(), help=f"[{key}]")
    g.add_argument("--name", default=None, help="run directory <logs>/<name> (instead of --run-dir)")
    g.add_argument("--logs", default=None, help="where --name's run directory goes (default: runs)")


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def to_overrides(ns: argparse.Namespace, world_size: int, accum_freq: Callable[[], int]) -> tuple[list[str], list[str]]:
    """(dotted overrides, one line per flag saying what it set). `accum_freq` is asked only for
    --batch-size without --accum-freq (it loads the config). Each override remembers its flag
    (config/origins.py Override), so that an error about its value names the flag as typed."""
    out, told = [], []
    for flag, (key, tp) in FLAGS.items():
        raw = getattr(ns, _dest(flag), None)
        if raw is None:
            continue
        if tp is None:
            value = "true"
        elif flag == "--batch-size":
            per_gpu = _number(flag, raw, int)
            accum = _number("--accum-freq", ns.accum_freq, int) if ns.accum_freq is not None else accum_freq()
            value = str(per_gpu * world_size * accum)
            told.append(f"{flag} {raw} -> {key}={value} ({per_gpu} per rank x {world_size} ranks x "
                        f"train.accum_freq {accum})")
            out.append(Override(f"{key}={value}", f"{flag} {raw}"))
            continue
        elif flag == "--csv-separator":
            value = json.dumps(raw)  # a YAML double-quoted string: the override parser reads it back as is
        elif tp is str:
            value = PRECISIONS.get(raw, raw) if flag == "--precision" else raw
        else:
            value = str(_number(flag, raw, tp))
        typed = flag if tp is None else f"{flag} {raw}"
        told.append(f"{typed} -> {key}={value}")
        out.append(Override(f"{key}={value}", typed))
    return out, told


def _number(flag: str, raw: str, tp: type) -> Any:
    try:
        return tp(raw)
    except ValueError:
        raise ConfigError(f"command line: {flag} {raw}: not a{'n' if tp is int else ''} "
                          f"{'integer' if tp is int else 'number'}") from None


def run_dir(ns: argparse.Namespace, config_path: str) -> Optional[str]:
    """--run-dir, or <logs>/<name> from open_clip's --name/--logs (None: the config's default)."""
    if ns.name is None and ns.logs is None:
        return ns.run_dir
    if ns.run_dir is not None:
        raise ConfigError("command line: give either --run-dir or open_clip's --name/--logs, not both")
    name = ns.name or os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join(ns.logs or "runs", name)


def refuse_unknown(extra: list[str]) -> None:
    """Every `--flag` argparse did not know, in one error: each with what to use instead (a mapped
    flag, a config key, or why to drop it), so a pasted open_clip_train command is fixed in one go."""
    flags = list(dict.fromkeys(a.split("=", 1)[0] for a in extra if a.startswith("--")))
    if not flags:
        return
    hints = [_hint(f) for f in flags]
    known = ", ".join(list(FLAGS) + list(RUN_DIR_FLAGS))
    if len(hints) == 1:
        tail = f"; the open_clip_train flags taken are {known}" if "has no mapping to a config key" in hints[0] else ""
        raise ConfigError(f"command line: {hints[0]}{tail}")
    raise ConfigError(f"command line: {len(hints)} flags have no mapping here: " + " | ".join(hints))


def _hint(flag: str) -> str:
    """What to use instead of one unknown flag."""
    if flag in INSTEAD:
        return f"{flag} has no mapping here; {INSTEAD[flag]}"
    known = list(FLAGS) + list(RUN_DIR_FLAGS)
    name = _dest(flag)
    leaf = SYNONYMS.get(name, name)
    by_leaf = [f for f, (k, _) in FLAGS.items() if k.rsplit(".", 1)[-1] == leaf]
    close = by_leaf or difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
    if close:
        key = FLAGS[close[0]][0] if close[0] in FLAGS else "the run directory"
        return f"unknown flag {flag}; did you mean {close[0]} ({key})?"
    key = _leaf_match(leaf)
    where = f"; the closest config key is {key} (set it as {key}=VALUE)" if key else ""
    return f"{flag} has no mapping to a config key{where}"


def config_keys() -> list[str]:
    """Every dotted leaf key of the schema (stages as stages.N.field)."""
    keys = []
    for f in dataclasses.fields(Config):
        tp = typing.get_type_hints(Config)[f.name]
        if f.name == "stages":
            keys += [f"stages.N.{s.name}" for s in dataclasses.fields(StageConfig)]
        elif dataclasses.is_dataclass(tp):
            keys += [f"{f.name}.{s.name}" for s in dataclasses.fields(tp)]
        else:
            keys.append(f.name)
    return keys


def _leaf_match(name: str) -> Optional[str]:
    """The config key whose last part is closest to the flag's name (sections differ from open_clip's)."""
    keys = config_keys()
    leaves: dict[str, str] = {}
    for k in keys:  # the first section wins: train.lr before stages.N.lr
        leaves.setdefault(k.rsplit(".", 1)[-1], k)
    close = difflib.get_close_matches(name, list(leaves), n=1, cutoff=0.6)
    return leaves[close[0]] if close else None
