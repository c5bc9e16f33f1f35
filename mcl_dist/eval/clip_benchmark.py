"""Score stage checkpoints and integrated models with clip_benchmark's own evaluation code.

    python -m mcl_dist.eval.clip_benchmark eval --model runs/x/integrated/model.pt runs/x/stage_0/checkpoint.pt \\
        --dataset wds/NAME --dataset_root DIR --task zeroshot_classification [clip_benchmark options]

Every `--model` value that is a file becomes a model of type `mcl_dist` (loaded by
`mcl_dist.integration.load_model`, so integrated models work too) named `<run>-<stage>`; anything else goes to
clip_benchmark unchanged. For plain open_clip use (`--model tiny-vit --pretrained
runs/x/stage_0/checkpoint.pt`), the custom JSON model config named in the run's saved
`config.yaml` is registered with open_clip first. Needs `pip install -e .[eval]` (clip_benchmark 1.6.2).

Two things differ from calling `clip_benchmark` directly:
- clip_benchmark 1.6.2's `accuracy` helper calls `float()` on a 1-element array, which numpy 2
  rejects; it is replaced (in zero-shot and linear probe alike) by one that returns the same value.
- clip_benchmark 1.6.2's linear probe is CUDA-only (it asserts `device == 'cuda'` and calls
  `.cuda()`); without a GPU `--task linear_probe` stops with one error line instead of an
  assertion (on CPU use `mcl-evaluate --probe-train ... --probe-test ...`).
`--no_amp` matters on CPU, where clip_benchmark's default AMP means bf16 autocast.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Optional

import open_clip
import torch
import yaml

from mcl_dist.config.schema import saved_path
from mcl_dist.core import layout
from mcl_dist.integration.integrated_model import load_model
from mcl_dist.model.open_clip_models import QuickGeluMismatch, peek_checkpoint, trained_quick_gelu

MODEL_TYPE = "mcl_dist"


def accuracy(output, target, topk=(1,)) -> list[float]:
    """clip_benchmark's top-k accuracy without `float(ndarray)` (a TypeError on numpy 2)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def run_model_config(checkpoint: str) -> Optional[str]:
    """The JSON model config that `<run_dir>/config.yaml` names, for a file in `<run_dir>/<step>/`."""

    run_dir = layout.run_dir_of(checkpoint)
    path = layout.config_path(run_dir)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    config_file = ((cfg.get("model") or {}).get("config_file") or "") if isinstance(cfg, dict) else ""
    if not config_file:
        return None
    if cfg.get("anchor"):  # where the run resolved its relative paths
        return saved_path(config_file, cfg["anchor"])
    # a run saved before config.yaml recorded its anchor: beside the run first, this directory last
    for base in (os.path.dirname(run_dir), os.path.dirname(os.path.dirname(run_dir)), ""):
        candidate = os.path.join(base, config_file)
        if os.path.exists(candidate):
            return candidate
    return None


def register_run_config(checkpoint: str) -> Optional[str]:
    """Make the run's custom model config known to open_clip; returns its path (None if none)."""

    config_file = run_model_config(checkpoint)
    if config_file:
        open_clip.add_model_config(config_file)
    return config_file


def load_mcl(model_name: str, pretrained: str, cache_dir: Optional[str] = None, device: Any = "cpu"):
    """clip_benchmark's loader contract: (model, transform, tokenizer). `pretrained` is our file."""

    register_run_config(pretrained)
    return load_model(pretrained, device=device)


def register() -> None:
    """Add our model type to clip_benchmark and fix its numpy-2 accuracy helper."""
    from clip_benchmark import models
    from clip_benchmark.metrics import linear_probe, zeroshot_classification

    models.TYPE2FUNC[MODEL_TYPE] = load_mcl
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)  # the same list the CLI's --model_type choices hold
    zeroshot_classification.accuracy = accuracy
    linear_probe.accuracy = accuracy  # imported by name there


def model_label(path: str) -> str:
    """runs/demo/integrated/model.pt -> demo-integrated (used in clip_benchmark's output names)."""
    parts = os.path.abspath(path).split(os.sep)
    return "-".join(p for p in parts[-3:-1] if p).replace(",", "_")


def rewrite_args(argv: list[str]) -> list[str]:
    """`--model FILE ...` -> `--model_type mcl_dist --pretrained_model LABEL,FILE ...`."""
    out, files, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--model":
            j = i + 1
            values = []
            while j < len(argv) and not argv[j].startswith("--"):
                values.append(argv[j])
                j += 1
            for v in values:
                if v.endswith(".pt") and not os.path.isfile(v):
                    raise FileNotFoundError(f"--model {v}: no such file")
            if values and all(os.path.isfile(v) for v in values):
                files += values
            else:
                out += argv[i:j]
            i = j
            continue
        out.append(argv[i])
        i += 1
    if files:
        if "--model_type" in out or "--pretrained_model" in out:
            raise ValueError("--model FILE cannot be combined with --model_type or --pretrained_model")
        out += ["--model_type", MODEL_TYPE, "--pretrained_model"] + [f"{model_label(f)},{f}" for f in files]
    return out


def _option(argv: list[str], name: str) -> Optional[str]:
    i = argv.index(name) if name in argv else -1
    return argv[i + 1] if 0 <= i < len(argv) - 1 else None


def check_task(argv: list[str]) -> None:
    if _option(argv, "--task") == "linear_probe" and not torch.cuda.is_available():
            raise ValueError("clip_benchmark 1.6.2's linear probe runs on CUDA only and no GPU is visible; "
                             "on CPU use mcl-evaluate --probe-train TRAIN --probe-test TEST")


def _values(argv: list[str], name: str) -> list[str]:
    i = argv.index(name) if name in argv else len(argv)
    out = []
    for v in argv[i + 1:]:
        if v.startswith("--"):
            break
        out.append(v)
    return out


def _register_pretrained_runs(argv: list[str]) -> None:
    """For `--pretrained FILE` with open_clip's own loader: register the run's custom config, and warn
    when the file was trained with QuickGELU, which open_clip applies to a file only for a name whose
    config says quick_gelu (a '-quickgelu' name)."""
    names = _values(argv, "--model")
    for v in _values(argv, "--pretrained"):
        if os.path.isfile(v):
            register_run_config(v)
            if trained_quick_gelu(peek_checkpoint(v)) and not all(
                    (open_clip.get_model_config(n) or {}).get("quick_gelu") for n in names):
                warnings.warn(f"{v}: trained with QuickGELU, but open_clip builds --model {' '.join(names)} with "
                              f"GELU from a checkpoint file, so its scores are not the trained model's; pass the "
                              f"file as --model {v} (mcl_dist's loader builds it as trained)", QuickGeluMismatch)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import clip_benchmark.cli as cb_cli
    except ImportError as e:
        print(f"error: clip_benchmark is not installed ({e}); pip install -e .[eval]", file=sys.stderr)
        return 2
    register()
    # clip_benchmark builds its WebDataset without shardshuffle; evaluation order does not matter
    warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle=", category=UserWarning)
    try:
        argv = rewrite_args(argv)
        check_task(argv)
        _register_pretrained_runs(argv)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = ["clip_benchmark"] + argv  # clip_benchmark's CLI parses sys.argv itself
    try:
        cb_cli.main()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
