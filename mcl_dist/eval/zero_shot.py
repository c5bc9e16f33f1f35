"""Zero-shot classification (open_clip's recipe) and the labelled image sources it reads.

Classifier: for each class, encode every template filled with the class name, L2-normalise,
average, normalise again. Images are scored by cosine similarity against these class vectors.
Sources yield (PIL image, class index): an image folder `root/<class>/*.png|jpg`, or labelled
webdataset shards whose label is `{key}.cls` (an integer) or a field of `{key}.json`.
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from mcl_dist.data.dataset import TrainData
from mcl_dist.data.decode import BadSample, decode_image
from mcl_dist.data.shards import expand_urls
from mcl_dist.data.streaming import ErrorLog, raw_samples
from mcl_dist.eval.linear_probe import extract_features

log = logging.getLogger("mcl_dist")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_TEMPLATES = ("a photo of a {}.",)
Template = Union[str, Callable[[str], str]]


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@torch.no_grad()
def zero_shot_classifier(model: Any, tokenizer: Callable, classnames: Sequence[str],
                         templates: Sequence[Template] = DEFAULT_TEMPLATES, device: Any = "cpu") -> torch.Tensor:
    """[d, n_classes] matrix of normalised class embeddings: open_clip's own build_zero_shot_classifier
    (our integrated model has the same encode_text(normalize=True))."""
    if not classnames or not templates:
        raise ValueError("zero_shot_classifier needs at least one class name and one template")
    # open_clip fills every template the way the first one is (str.format or a call): keep mixed lists working
    templates = [t if callable(t) else (lambda c, t=t: _fill(t, c)) for t in templates] \
        if any(callable(t) for t in templates) else list(templates)
    return open_clip.build_zero_shot_classifier(model, tokenizer, list(classnames), templates, device=device).float()


def evaluate_zero_shot(model: Any, preprocess: Callable, tokenizer: Callable,
                       images: Iterable[tuple[Image.Image, int]], classnames: Sequence[str],
                       templates: Sequence[Template] = DEFAULT_TEMPLATES, device: Any = "cpu",
                       batch_size: int = 256) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (top-5 means top-min(5, classes))."""
    clf = zero_shot_classifier(model, tokenizer, classnames, templates, device).cpu()
    feats, labels = extract_features(model, preprocess, images, device, batch_size, normalize=True)
    return zero_shot_scores(feats, labels, clf)


def zero_shot_scores(feats: torch.Tensor, labels: torch.Tensor, clf: torch.Tensor) -> dict[str, Any]:
    """Accuracy of image features [n, d] against a classifier [d, classes] from zero_shot_classifier."""
    n_cls = clf.shape[1]
    if int(labels.max()) >= n_cls or int(labels.min()) < 0:
        raise ValueError(f"labels run {int(labels.min())}..{int(labels.max())} but there are {n_cls} classes")
    logits = F.normalize(feats.float(), dim=-1) @ clf.float()
    k = min(5, n_cls)
    topk = logits.topk(k, dim=1).indices
    top1 = (topk[:, 0] == labels).double().mean().item()
    top5 = (topk == labels[:, None]).any(1).double().mean().item()
    return {"top1": top1, "top5": top5, "n": len(labels), "classes": n_cls}


# ---------------------------------------------------------------------------- sources

def folder_classnames(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such image folder")
    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not names:
        raise ValueError(f"{root}: no class sub-folders (expected root/<class>/*.png|jpg)")
    return names


def iter_image_folder(root: str, classnames: Optional[Sequence[str]] = None) -> Iterator[tuple[Image.Image, int]]:
    """(image, class index) for `root/<class>/*`; class index = position in `classnames`
    (default: the sorted sub-folder names)."""
    folders = folder_classnames(root)
    classnames = list(classnames) if classnames is not None else folders
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise ValueError(f"{root}: sub-folder(s) {unknown} are not among the class names")
    for folder in folders:
        d = os.path.join(root, folder)
        for fname in sorted(os.listdir(d)):
            if fname.lower().endswith(IMAGE_EXTS):
                path = os.path.join(d, fname)
                try:
                    with Image.open(path) as img:
                        yield img.convert("RGB"), classnames.index(folder)
                except OSError as e:
                    raise ValueError(f"{path}: cannot read image ({e})") from e


def _expand(urls: Union[str, Sequence[str], TrainData]) -> Union[list[str], TrainData]:
    if isinstance(urls, str):
        return expand_urls(urls, key="eval shards")
    return urls if isinstance(urls, TrainData) else list(urls)


def _raw_samples(urls: Union[list[str], TrainData], errors: ErrorLog) -> Iterator[dict]:
    """Shards' samples, or a training data set's (a CSV's rows) through its own reader."""
    return urls.raw_samples(errors) if isinstance(urls, TrainData) else raw_samples(urls, errors)


CLS = ".cls"  # label "field" meaning the `{key}.cls` member rather than a field of `{key}.json`


def _raw_label(raw: dict, label_field: Optional[str]) -> Any:
    """The sample's label (int or str), or None when it has none."""
    if label_field is None or label_field == CLS:
        data = raw.get("cls")
        return int(data.decode().strip()) if data is not None else None
    data = raw.get("json")
    if data is None:
        return None
    obj = json.loads(data)
    if not isinstance(obj, dict):  # e.g. `[1, 2]`: no field to read, a bad label, not a crash
        raise BadSample("label_not_an_object", f"{raw.get('__key__')}.json is a {type(obj).__name__}")
    value = obj.get(label_field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise BadSample("label_not_a_name_or_int", f"{raw.get('__key__')}: {label_field} is {value!r}")
    return value


def scan_label_values(urls: Union[str, Sequence[str]], label_field: Optional[str] = None) -> list:
    """Sorted distinct label values (reads label members only; images are not decoded)."""
    values = set()
    for raw in raw_samples(_expand(urls), ErrorLog()):
        try:
            v = _raw_label(raw, label_field)
        except (BadSample, ValueError, UnicodeDecodeError):
            continue
        if v is not None:
            values.add(v)
    return sorted(values, key=lambda v: (not isinstance(v, int), v))


def iter_labelled_samples(urls: Union[str, Sequence[str], TrainData], fields: Sequence[Optional[str]],
                          image_exts: Sequence[str] = ("jpg", "png", "webp", "jpeg"),
                          max_samples: Optional[int] = None, skipped: Optional[Counter] = None,
                          counted: Sequence[str] = ()) -> Iterator[tuple[Image.Image, dict]]:
    """(image, {field: raw label or None}) for every readable sample, so that several label
    fields are evaluated from ONE pass of feature extraction. Bad samples are skipped, counted by
    reason into `skipped` and logged; members lost to a damaged tar too, unless the tar is one of
    `counted` (training shards, whose loss the pre-training check counts)."""
    urls = _expand(urls)
    errors = ErrorLog()  # damaged tar members are skipped, like training streams do
    skipped = Counter() if skipped is None else skipped
    n = 0
    for raw in _raw_samples(urls, errors):
        if max_samples is not None and n >= max_samples:
            break
        try:
            labels = {f: _raw_label(raw, f) for f in fields}
            img = decode_image(raw, tuple(image_exts))
        except BadSample as e:
            skipped[e.reason] += 1
            continue
        except (ValueError, UnicodeDecodeError):  # a .json or .cls that does not parse
            skipped["bad_label"] += 1
            continue
        n += 1
        yield img, labels
    counted = set(counted)
    lost = sum(n for url, n in errors.damaged.items() if url not in counted)
    if lost:
        skipped["damaged_tar_member"] += lost
    if skipped:
        where = urls.describe() if isinstance(urls, TrainData) else urls[0] + (" …" if len(urls) > 1 else "")
        log.warning("%s: skipped %s", where, dict(skipped))


def label_indices(raw_labels: Sequence[Any], classnames: Optional[Sequence[str]], where: str,
                  skipped: Optional[Counter] = None) -> list[Optional[int]]:
    """Integer labels as they are; string labels -> their position in `classnames`; None stays.
    A label that is not among the class names is an error, or with `skipped` None and counted."""
    out: list[Optional[int]] = []
    for v in raw_labels:
        if v is None or (isinstance(v, int) and not isinstance(v, bool)):
            out.append(v)
        elif classnames is not None and v in classnames:
            out.append(list(classnames).index(v))
        elif skipped is not None:
            skipped["label_not_in_class_names"] += 1
            out.append(None)
        else:
            raise ValueError(f"{where}: label {v!r} is not among the class names "
                             f"{list(classnames) if classnames is not None else None}")
    return out


def iter_webdataset(urls: Union[str, Sequence[str]], label_field: Optional[str] = None,
                    classnames: Optional[Sequence[str]] = None, image_exts: Sequence[str] = ("jpg", "png", "webp", "jpeg"),
                    max_samples: Optional[int] = None) -> Iterator[tuple[Image.Image, int]]:
    """(image, class index) from labelled shards (`.cls`, or json field `label_field`). Integer
    labels are used as they are; string labels are looked up in `classnames`. Samples without a
    label are skipped; a source with no labelled sample is an error."""
    where = f"{urls if isinstance(urls, str) else urls[0]} (label {label_field or CLS})"
    n = 0
    for img, labels in iter_labelled_samples(urls, [label_field], image_exts, max_samples):
        (y,) = label_indices([labels[label_field]], classnames, where)
        if y is not None:
            n += 1
            yield img, y
    if n == 0:
        raise ValueError(f"{where}: no labelled sample could be read")


def load_classnames(path: str) -> tuple[list[str], Optional[list[str]]]:
    """Class names (and optional templates) from a text file (one per line) or JSON: a list, or
    {"classnames": [...], "templates": [...]}; templates use '{}' for the class name."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if isinstance(obj, list):
            return [str(c) for c in obj], None
        if isinstance(obj, dict) and "classnames" in obj:
            t = obj.get("templates")
            return [str(c) for c in obj["classnames"]], [str(x) for x in t] if t else None
        raise ValueError(f"{path}: expected a list of class names or {{'classnames': [...], 'templates': [...]}}")
    names = [line.strip() for line in io.StringIO(text) if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names, None
