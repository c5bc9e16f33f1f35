"""Evaluation of a stage checkpoint or the integrated model: zero-shot, MMVP-VLM pairs, linear probe.

`evaluate_loaded` runs whichever evaluations it is given data for and returns one JSON-ready
dict; every piece it skips is listed under "notes" so a report can say why it is missing:

    {"zero_shot": {set: {"top1", "top5", "n", "classes"}},
     "linear_probe": {field: {"top1", "train_top1", ...}}, "knn": {field: {"top1", "k", ...}},
     "mmvp": {"per_category": {...}, "mean", "overall", "pairs"}, "notes": [...]}

Images of a labelled shard set are embedded ONCE and every label field is scored from those
features (several fields, zero-shot and probe share one pass).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Optional, Sequence

import torch

from mcl_dist.eval.linear_probe import extract_features, knn_accuracy, linear_probe
from mcl_dist.eval.mmvp import evaluate_mmvp, read_pairs
from mcl_dist.eval.zero_shot import (CLS, DEFAULT_TEMPLATES, evaluate_zero_shot, folder_classnames, iter_image_folder,
                                     iter_labelled_samples, iter_webdataset, label_indices, load_classnames,
                                     scan_label_values, zero_shot_classifier, zero_shot_scores)
from mcl_dist.integrate import load_model

__all__ = ["evaluate_loaded", "evaluate_model", "evaluate_mmvp", "evaluate_zero_shot", "extract_features",
           "iter_image_folder", "iter_webdataset", "iter_labelled_samples", "knn_accuracy", "linear_probe",
           "load_classnames", "read_pairs", "scan_label_values", "zero_shot_classifier", "zero_shot_scores",
           "has_text", "CLS"]
log = logging.getLogger("mcl_dist")


def has_text(model: Any) -> bool:
    stages = getattr(model, "stages", None)
    return all(hasattr(m, "encode_text") for m in (stages if stages is not None else [model]))


def _embed_shards(model, preprocess, urls, fields, device, batch_size, max_samples=None, skipped=None):
    """Features of a shard set plus every field's raw labels, from one pass."""
    labels: list[dict] = []

    def numbered():
        for img, lab in iter_labelled_samples(urls, fields, max_samples=max_samples, skipped=skipped):
            labels.append(lab)
            yield img, len(labels) - 1  # the "label" is the sample number; real labels stay aside

    feats, _ = extract_features(model, preprocess, numbered(), device, batch_size)
    return feats, labels


def _field_labels(labels: list[dict], field: str, classnames, where: str, skipped=None):
    idx = label_indices([lab[field] for lab in labels], classnames, where, skipped)
    keep = torch.tensor([i is not None for i in idx], dtype=torch.bool)
    return keep, torch.tensor([i for i in idx if i is not None], dtype=torch.long)


def evaluate_loaded(model: Any, preprocess: Any, tokenizer: Any, *, device: Any = "cpu", batch_size: int = 256,
                    test_urls: Any = None, train_urls: Any = None, label_fields: Sequence[str] = (),
                    zero_shot_classes: Optional[dict] = None, probe_max_samples: Optional[int] = 4000,
                    zs_folder: Optional[str] = None, zs_classnames: Optional[list] = None,
                    zs_templates: Optional[list] = None, mmvp_dir: Optional[str] = None, knn_k: int = 20,
                    probe_seed: int = 0) -> dict[str, Any]:
    """Run every evaluation that has data. `zero_shot_classes`: {field: {"classnames", "templates"}};
    a field without an entry uses its string label values as class names. `label_fields` may
    contain ".cls" for the `{key}.cls` member."""
    model.eval()
    out: dict[str, Any] = {"zero_shot": {}, "linear_probe": {}, "knn": {}, "notes": []}
    text = has_text(model)
    note = out["notes"].append
    zsc = zero_shot_classes or {}
    skipped: Counter = Counter()  # samples (or sample labels) left out, by reason: results.json keeps them

    if zs_folder:
        if text:
            names = list(zs_classnames) if zs_classnames else folder_classnames(zs_folder)
            out["zero_shot"][os.path.basename(os.path.normpath(zs_folder))] = evaluate_zero_shot(
                model, preprocess, tokenizer, iter_image_folder(zs_folder, names), names,
                zs_templates or DEFAULT_TEMPLATES, device, batch_size)
        else:
            note("zero-shot (folder) skipped: the model has no text tower")

    fields = list(label_fields)
    if test_urls and fields:
        test_x, test_labels = _embed_shards(model, preprocess, test_urls, fields, device, batch_size, None, skipped)
        train = None
        if train_urls:
            train = _embed_shards(model, preprocess, train_urls, fields, device, batch_size, probe_max_samples, skipped)
        else:
            note("linear probe / k-NN skipped: no training shards given")
        for f in fields:
            entry = zsc.get(f, {})
            values = sorted({lab[f] for lab in test_labels if lab[f] is not None} |
                            ({lab[f] for lab in train[1] if lab[f] is not None} if train else set()),
                            key=lambda v: (not isinstance(v, int), v))
            names = entry.get("classnames") or ([v for v in values if isinstance(v, str)] or None)
            keep, y = _field_labels(test_labels, f, names, f"test shards, field {f!r}", skipped)
            if not len(y):
                note(f"field {f!r}: no test sample carries it")
                continue
            if text and names:
                clf = zero_shot_classifier(model, tokenizer, names, entry.get("templates") or DEFAULT_TEMPLATES, device)
                out["zero_shot"][f] = zero_shot_scores(test_x[keep], y, clf.cpu())
            elif text:
                note(f"zero-shot {f!r} skipped: integer labels and no class names in zero_shot_classes")
            if train is not None:
                tkeep, ty = _field_labels(train[1], f, names, f"probe shards, field {f!r}", skipped)
                if not len(ty):
                    note(f"linear probe {f!r} skipped: no training sample carries it")
                    continue
                n_cls = len(names) if names else int(max(ty.max(), y.max())) + 1
                out["linear_probe"][f] = linear_probe(train[0][tkeep], ty, test_x[keep], y, seed=probe_seed,
                                                      num_classes=n_cls)
                out["knn"][f] = knn_accuracy(train[0][tkeep], ty, test_x[keep], y, k=knn_k)
    elif fields:
        note("zero-shot / linear probe on shards skipped: no test shards given")
    elif test_urls:
        note("zero-shot / linear probe on shards skipped: no label fields given")
    if not text:
        note("MMVP and shard zero-shot need a text tower; the model has none")

    out["skipped"] = dict(sorted(skipped.items()))
    if skipped:
        note("samples left out: " + ", ".join(f"{r} {n}" for r, n in sorted(skipped.items())))
    if mmvp_dir and text:
        out["mmvp"] = evaluate_mmvp(model, preprocess, tokenizer, mmvp_dir, device)
    elif not mmvp_dir:
        note("MMVP skipped: no MMVP-VLM folder given")
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


def evaluate_model(path: str, cfg: Any, urls: Sequence[str], device: Any = "cpu") -> dict[str, Any]:
    """The pipeline's evaluation of one checkpoint (stage or integrated) from the run config:
    zero-shot and probe on `cfg.eval.test_shards` for every `cfg.eval.label_fields`, the probe
    fitted on the first `probe_max_samples` training samples (`urls`), MMVP on `cfg.eval.mmvp_dir`."""
    ev = cfg.eval
    model, preprocess, tokenizer = load_model(path, device=device)
    res = evaluate_loaded(model, preprocess, tokenizer, device=device, batch_size=ev.batch_size,
                          test_urls=ev.test_shards or None, train_urls=list(urls) or None,
                          label_fields=list(ev.label_fields), zero_shot_classes=_zero_shot_classes(ev.zero_shot_classes),
                          probe_max_samples=ev.probe_max_samples, mmvp_dir=ev.mmvp_dir or None)
    res["model"] = path
    return res
