"""Suggestions for a mistyped config key that know what other trainers call our settings.

difflib alone finds spelling slips (`train.lrr` -> `train.lr`) but not other names for the same
thing: `train.learning_rate` is closest in spelling to `train.nan_patience`. The synonyms below are
the names open_clip_train, timm, HF Trainer and scikit-learn users type; a key whose last part is
one of them is pointed at our field of that meaning when that field exists in the same section.
"""
from __future__ import annotations

import difflib
from typing import Optional

SYNONYMS = {
    "learning_rate": "lr", "base_lr": "lr",
    "weight_decay": "wd",
    "warmup": "warmup_steps", "warmup_iters": "warmup_steps", "num_warmup_steps": "warmup_steps",
    "batch_size": "global_batch_size", "train_batch_size": "global_batch_size",
    "per_device_train_batch_size": "global_batch_size",
    "gradient_accumulation_steps": "accum_freq", "grad_accum": "accum_freq", "accumulation_steps": "accum_freq",
    "clip_grad_norm": "grad_clip_norm", "max_grad_norm": "grad_clip_norm", "grad_clip": "grad_clip_norm",
    "scheduler": "lr_scheduler", "lr_schedule": "lr_scheduler",
    "num_epochs": "epochs", "n_epochs": "epochs",
    "amp": "precision", "mixed_precision": "precision", "dtype": "precision",
    "num_workers": "workers",
    "num_clusters": "k", "n_clusters": "k", "clusters": "k",
    "max_iter": "kmeans_iters", "iters": "kmeans_iters", "tol": "kmeans_tol",
    "model": "name", "arch": "name", "model_name": "name",
    "train_data": "train_shards", "shards": "train_shards", "urls": "train_shards",
    "train_num_samples": "num_samples",
    "lock_image_tower": "lock_image", "lock_text_tower": "lock_text",
    "report_to": "report_to", "logger": "report_to",
    "output_dir": "run_dir", "logs": "run_dir",
}


def suggest(key: str, valid: list[str]) -> Optional[str]:
    """The valid key `key` most likely means: a synonym in the same section first, then spelling."""
    prefix, _, last = key.rpartition(".")
    target = SYNONYMS.get(last.lower().replace("-", "_"))
    if target:
        want = f"{prefix}.{target}" if prefix else target
        if want in valid:
            return want
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return close[0] if close else None
