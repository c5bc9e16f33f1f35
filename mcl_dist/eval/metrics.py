"""The eval metrics' bodies: each takes the EvalInputs (mcl_dist/eval/inputs.py) and returns its
results keyed by what it scored (a label field, an image folder, an MMVP category set), adding a
note for whatever it had to skip. mcl_dist/eval/metric_registry.py lists them."""
from __future__ import annotations

import os
from typing import Any

from mcl_dist.eval.inputs import EvalInputs
from mcl_dist.eval.linear_probe import knn_accuracy, linear_probe
from mcl_dist.eval.mmvp import evaluate_mmvp
from mcl_dist.eval.zero_shot import (DEFAULT_TEMPLATES, evaluate_zero_shot, folder_classnames, iter_image_folder,
                                     zero_shot_classifier, zero_shot_scores)


def zero_shot(inp: EvalInputs) -> dict[str, Any]:
    """Top-1/top-5 from the class names' text embeddings: an image folder and every label field."""
    out: dict[str, Any] = {}
    if not inp.text:
        if inp.zs_folder:
            inp.notes.append("zero-shot (folder) skipped: the model has no text tower")
        return out
    if inp.zs_folder:
        names = list(inp.zs_classnames) if inp.zs_classnames else folder_classnames(inp.zs_folder)
        out[os.path.basename(os.path.normpath(inp.zs_folder))] = evaluate_zero_shot(
            inp.model, inp.preprocess, inp.tokenizer, iter_image_folder(inp.zs_folder, names), names,
            inp.zs_templates or DEFAULT_TEMPLATES, inp.device, inp.batch_size)
    test = inp.test()
    for name in inp.fields if test else []:
        keep, y = inp.field_split(name, "test")
        names = inp.classnames(name)
        if not len(y):
            inp.notes.append(f"field {name!r}: no test sample carries it")
        elif names:
            templates = inp.zero_shot_classes.get(name, {}).get("templates") or DEFAULT_TEMPLATES
            clf = zero_shot_classifier(inp.model, inp.tokenizer, names, templates, inp.device)
            out[name] = zero_shot_scores(test[0][keep], y, clf.cpu())
        else:
            inp.notes.append(f"zero-shot {name!r} skipped: integer labels and no class names in zero_shot_classes")
    return out


def _fitted(inp: EvalInputs, score) -> dict[str, Any]:
    """A score fitted on the training shards' features and tested on the test shards', per field."""
    out: dict[str, Any] = {}
    test, train = inp.test(), inp.train()
    if test is None or train is None:
        return out
    for name in inp.fields:
        keep, y = inp.field_split(name, "test")
        tkeep, ty = inp.field_split(name, "train")
        if len(y) and len(ty):
            out[name] = score(train[0][tkeep], ty, test[0][keep], y, inp.classnames(name))
    return out


def linear_probe_metric(inp: EvalInputs) -> dict[str, Any]:
    """Logistic regression on frozen features, per label field."""
    def score(tx, ty, x, y, names):
        n_cls = len(names) if names else int(max(ty.max(), y.max())) + 1
        return linear_probe(tx, ty, x, y, seed=inp.probe_seed, num_classes=n_cls)

    out = _fitted(inp, score)
    if inp.train() is not None:
        inp.notes += [f"linear probe {f!r} skipped: no training sample carries it" for f in inp.fields
                      if f not in out and len(inp.field_split(f, "test")[1])]
    return out


def knn_metric(inp: EvalInputs) -> dict[str, Any]:
    """k-nearest-neighbour accuracy on frozen features, per label field."""
    return _fitted(inp, lambda tx, ty, x, y, names: knn_accuracy(tx, ty, x, y, k=inp.knn_k))


def mmvp_metric(inp: EvalInputs) -> dict[str, Any]:
    """MMVP-VLM pairs: per category, mean and overall."""
    if not inp.mmvp_dir:
        inp.notes.append("MMVP skipped: no MMVP-VLM folder given")
        return {}
    if not inp.text:
        return {}
    return evaluate_mmvp(inp.model, inp.preprocess, inp.tokenizer, inp.mmvp_dir, inp.device)
