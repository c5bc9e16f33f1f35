"""What every eval metric reads: the model, the evaluation data, and the labelled shards' features,
embedded once on first use and shared (zero-shot, linear probe and k-NN score the same pass).
Samples and labels that cannot be used are left out and counted once, by reason, in `skipped`
(results.json keeps the counts), so every metric sees the same data and none crashes on it."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from mcl_dist.eval.linear_probe import extract_features
from mcl_dist.eval.zero_shot import iter_labelled_samples, label_indices


def has_text(model: Any) -> bool:
    stages = getattr(model, "stages", None)
    return all(hasattr(m, "encode_text") for m in (stages if stages is not None else [model]))


def field_labels(labels: list[dict], name: str, classnames, where: str, skipped=None):
    idx = label_indices([lab[name] for lab in labels], classnames, where, skipped)
    keep = torch.tensor([i is not None for i in idx], dtype=torch.bool)
    return keep, torch.tensor([i for i in idx if i is not None], dtype=torch.long)


@dataclass
class EvalInputs:
    model: Any
    preprocess: Any
    tokenizer: Any
    device: Any = "cpu"
    batch_size: int = 256
    test_urls: Any = None
    train_urls: Any = None
    fields: list = field(default_factory=list)  # label fields of the labelled shards
    zero_shot_classes: dict = field(default_factory=dict)  # {field: {"classnames", "templates"}}
    probe_max_samples: Optional[int] = 4000
    zs_folder: Optional[str] = None
    zs_classnames: Optional[list] = None
    zs_templates: Optional[list] = None
    mmvp_dir: Optional[str] = None
    knn_k: int = 20
    probe_seed: int = 0
    counted: list = field(default_factory=list)  # shards whose damaged-tar losses were counted before training
    notes: list = field(default_factory=list)  # why a metric (or part of one) was skipped
    skipped: Counter = field(default_factory=Counter)  # samples (or their labels) left out, by reason
    _cache: dict = field(default_factory=dict)

    @property
    def text(self) -> bool:
        return has_text(self.model)

    def _embed(self, urls, max_samples=None):
        """Features of a shard set plus every field's raw labels, from one pass."""
        labels: list[dict] = []

        def numbered():
            for img, lab in iter_labelled_samples(urls, self.fields, max_samples=max_samples, skipped=self.skipped,
                                                  counted=self.counted):
                labels.append(lab)
                yield img, len(labels) - 1  # the "label" is the sample number; real labels stay aside

        feats, _ = extract_features(self.model, self.preprocess, numbered(), self.device, self.batch_size)
        return feats, labels

    def test(self):
        """(features, raw labels) of the test shards, or None without test shards or fields."""
        if "test" not in self._cache:
            self._cache["test"] = self._embed(self.test_urls) if self.test_urls and self.fields else None
        return self._cache["test"]

    def train(self):
        """(features, raw labels) of the first probe_max_samples training samples, or None."""
        if "train" not in self._cache:
            ok = self.train_urls and self.test()
            self._cache["train"] = self._embed(self.train_urls, self.probe_max_samples) if ok else None
        return self._cache["train"]

    def classnames(self, name: str):
        """A field's class names: zero_shot_classes', else its string label values (sorted)."""
        entry = self.zero_shot_classes.get(name, {})
        sets = [s for s in (self.test(), self.train()) if s is not None]
        values = sorted({lab[name] for _, labels in sets for lab in labels if lab[name] is not None},
                        key=lambda v: (not isinstance(v, int), v))
        return entry.get("classnames") or ([v for v in values if isinstance(v, str)] or None)

    def field_split(self, name: str, split: str):
        """(kept rows, label indices) of a field in the test or train set; computed once, so a label
        outside the class names is counted once however many metrics read it."""
        key = ("split", name, split)
        if key not in self._cache:
            _, labels = self.test() if split == "test" else self.train()
            where = f"{'test' if split == 'test' else 'probe'} shards, field {name!r}"
            self._cache[key] = field_labels(labels, name, self.classnames(name), where, self.skipped)
        return self._cache[key]
