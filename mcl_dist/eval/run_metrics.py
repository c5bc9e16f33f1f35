"""Evaluation of a stage checkpoint or the integrated model by the registered metrics (metric_registry.py).

`evaluate_loaded` runs whichever evaluations it is given data for and returns one JSON-ready
dict; every piece it skips is listed under "notes" so a report can say why it is missing:

    {"zero_shot": {set: {"top1", "top5", "n", "classes"}},      # one entry per metric, {} without data
     "linear_probe": {field: {"top1", "train_top1", ...}}, "knn": {field: {"top1", "k", ...}},
     "mmvp": {"per_category": {...}, "mean", "overall", "pairs"}, "notes": [...],
     "skipped": {reason: count}}                                  # samples and labels left out

Images of a labelled shard set are embedded ONCE and every label field is scored from those
features (several fields, zero-shot and probe share one pass).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional, Sequence

from mcl_dist.data.dataset import TrainData
from mcl_dist.data.shards import is_local
from mcl_dist.eval.inputs import EvalInputs, has_text
from mcl_dist.eval.linear_probe import extract_features, knn_accuracy, linear_probe
from mcl_dist.eval.metric_registry import selected
from mcl_dist.eval.mmvp import evaluate_mmvp, read_pairs
from mcl_dist.eval.zero_shot import (CLS, evaluate_zero_shot, iter_image_folder, iter_labelled_samples, iter_webdataset,
                                     load_classnames, scan_label_values, zero_shot_classifier, zero_shot_scores)
from mcl_dist.integration.integrated_model import load_model

__all__ = ["evaluate_loaded", "evaluate_model", "evaluate_mmvp", "evaluate_zero_shot", "extract_features",
           "iter_image_folder", "iter_webdataset", "iter_labelled_samples", "knn_accuracy", "linear_probe",
           "load_classnames", "read_pairs", "scan_label_values", "zero_shot_classifier", "zero_shot_scores",
           "has_text", "CLS"]
log = logging.getLogger("mcl_dist")


def evaluate_loaded(model: Any, preprocess: Any, tokenizer: Any, *, device: Any = "cpu", batch_size: int = 256,
                    test_urls: Any = None, train_urls: Any = None, label_fields: Sequence[str] = (),
                    zero_shot_classes: Optional[dict] = None, probe_max_samples: Optional[int] = 4000,
                    zs_folder: Optional[str] = None, zs_classnames: Optional[list] = None,
                    zs_templates: Optional[list] = None, mmvp_dir: Optional[str] = None, knn_k: int = 20,
                    probe_seed: int = 0, metrics: Sequence[str] = (), counted: Sequence[str] = ()) -> dict[str, Any]:
    """Run every metric of `metrics` (default: all the pipeline runs, mcl_dist/eval/metric_registry.py)
    that has data. `zero_shot_classes`: {field: {"classnames", "templates"}}; a field without an
    entry uses its string label values as class names. `label_fields` may contain ".cls" for the
    `{key}.cls` member. `counted`: shards whose damaged-tar losses are counted elsewhere (not again
    in "skipped")."""
    model.eval()
    inp = EvalInputs(model, preprocess, tokenizer, device=device, batch_size=batch_size, test_urls=test_urls,
                     train_urls=train_urls, fields=list(label_fields), zero_shot_classes=zero_shot_classes or {},
                     probe_max_samples=probe_max_samples, zs_folder=zs_folder, zs_classnames=zs_classnames,
                     zs_templates=zs_templates, mmvp_dir=mmvp_dir, knn_k=knn_k, probe_seed=probe_seed,
                     counted=list(counted))
    out: dict[str, Any] = {}
    for metric in selected(metrics):
        out[metric.name] = metric.run(inp)  # one shape: {what it scored: scores}, {} when it had no data
    if inp.fields and not test_urls:
        inp.notes.append("zero-shot / linear probe on shards skipped: no test shards given")
    elif test_urls and not inp.fields:
        inp.notes.append("zero-shot / linear probe on shards skipped: no label fields given")
    elif inp.test() is not None and not train_urls:
        inp.notes.append("linear probe / k-NN skipped: no training shards given")
    if not inp.text:
        inp.notes.append("MMVP and shard zero-shot need a text tower; the model has none")
    out["skipped"] = dict(sorted(inp.skipped.items()))
    if inp.skipped:
        inp.notes.append("samples left out: " + ", ".join(f"{r} {n}" for r, n in sorted(inp.skipped.items())))
    out["notes"] = inp.notes
    return out


def _zero_shot_classes(spec: str) -> dict:
    """eval.zero_shot_classes is a JSON file path or an inline JSON string."""
    if not spec:
        return {}
    if os.path.exists(spec):
        with open(spec) as f:
            return json.load(f)
    try:
        return json.loads(spec)
    except ValueError as e:
        raise ValueError(f"'eval.zero_shot_classes': neither a file nor valid JSON ({e})") from e


def evaluate_model(path: str, cfg: Any, train: Any, device: Any = "cpu") -> dict[str, Any]:
    """The pipeline's evaluation of one checkpoint (stage or integrated) from the run config:
    zero-shot and probe on `cfg.eval.test_shards` for every `cfg.eval.label_fields`, the probe
    fitted on the first `probe_max_samples` training samples (`train`: shard URLs, or the run's
    data/dataset.py TrainData, e.g. a CSV whose extra columns hold the label fields), MMVP on
    `cfg.eval.mmvp_dir`. Local training shards were checked before training (the pipeline's
    preflight), which counted what their damaged tars lost: the probe does not count it again."""
    ev = cfg.eval
    if isinstance(train, TrainData):  # only tar shards lose members to damage (a CSV has none)
        train_urls, counted = train, list(train.units) if train.kind == "webdataset" and train.can_index() else []
    else:
        train_urls, counted = list(train) or None, list(train) if all(map(is_local, train)) else []
    model, preprocess, tokenizer = load_model(path, device=device)
    res = evaluate_loaded(model, preprocess, tokenizer, device=device, batch_size=ev.batch_size,
                          test_urls=ev.test_shards or None, train_urls=train_urls,
                          label_fields=list(ev.label_fields), zero_shot_classes=_zero_shot_classes(ev.zero_shot_classes),
                          probe_max_samples=ev.probe_max_samples, mmvp_dir=ev.mmvp_dir or None,
                          metrics=list(ev.metrics), counted=counted)
    res["model"] = path
    return res
