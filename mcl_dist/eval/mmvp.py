"""MMVP-VLM pair benchmark (Tong et al., "Eyes Wide Shut?"), scored as its evaluate_vlm.py does.

Format: `<folder>/Questions.csv` with a header row and rows `question id, category, statement`;
consecutive rows form a pair (two images of a "CLIP-blind pair", one statement about each).
Image `<qid>.jpg` of a row lives in `<folder>/MLLM_VLM Images/<category>/` (the released layout)
or `<folder>/<category>/`. The statement of an odd qid describes the pair's first image, an even
qid the second. Each statement is prefixed with "a photo of " and picks the image it is more
similar to; a pair scores only if BOTH statements pick their own image. Accuracy is per category;
"mean" is the mean over categories (the number the MMVP and MCL papers report).
"""
from __future__ import annotations

import csv
import os
from collections import OrderedDict
from typing import Any, Callable, Optional

import torch
from PIL import Image

RELEASED_IMAGE_DIR = "MLLM_VLM Images"
EXTS = (".jpg", ".jpeg", ".png", ".webp")


def read_pairs(folder: str) -> list[dict]:
    """Parse Questions.csv into pairs; every problem names the file and line."""
    csv_path = os.path.join(folder, "Questions.csv")
    if not os.path.exists(csv_path):
        raise FileNotFoundError(f"{csv_path}: MMVP-VLM questions file not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if any(c.strip() for c in r)]
    if rows and not rows[0][1][0].strip().isdigit():
        rows = rows[1:]  # the header ("Question ID,Type,Statement" in the release)
    parsed = []
    for line, r in rows:
        if len(r) != 3:
            raise ValueError(f"{csv_path}:{line}: expected 3 columns (qid, category, statement), got {len(r)}: {r}")
        try:
            qid = int(r[0])
        except ValueError:
            raise ValueError(f"{csv_path}:{line}: question id {r[0]!r} is not an integer") from None
        if not r[1].strip() or not r[2].strip():
            raise ValueError(f"{csv_path}:{line}: empty category or statement")
        parsed.append((line, qid, r[1].strip(), r[2].strip()))
    if not parsed:
        raise ValueError(f"{csv_path}: no questions")
    if len(parsed) % 2:
        raise ValueError(f"{csv_path}: {len(parsed)} questions, an odd number; rows must come in pairs")
    image_root = os.path.join(folder, RELEASED_IMAGE_DIR)
    image_root = image_root if os.path.isdir(image_root) else folder
    pairs = []
    for (l1, q1, c1, s1), (l2, q2, c2, s2) in zip(parsed[0::2], parsed[1::2]):
        if c1 != c2:
            raise ValueError(f"{csv_path}:{l1}-{l2}: a pair spans two categories ({c1!r}, {c2!r})")
        if q1 % 2 == q2 % 2:
            # ground truth comes from qid parity (odd -> first image); equal parity means both
            # statements would describe the same image and the pair tests nothing
            raise ValueError(f"{csv_path}:{l1}-{l2}: question ids {q1} and {q2} have the same parity")
        pairs.append({"category": c1, "qids": (q1, q2), "statements": (s1, s2),
                      "images": (_image_path(image_root, c1, q1, csv_path, l1),
                                 _image_path(image_root, c1, q2, csv_path, l2)),
                      "gt": (0 if q1 % 2 else 1, 0 if q2 % 2 else 1)})
    return pairs


def _image_path(root: str, category: str, qid: int, csv_path: str, line: int) -> str:
    for ext in EXTS:
        p = os.path.join(root, category, f"{qid}{ext}")
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{os.path.join(root, category, f'{qid}.jpg')}: image for question {qid} "
                            f"({csv_path}:{line}) not found")


def _load(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as e:
        raise ValueError(f"{path}: cannot read image ({e})") from e


@torch.no_grad()
def evaluate_mmvp(model: Any, preprocess: Callable, tokenizer: Callable, folder: str, device: Any = "cpu",
                  prefix: str = "a photo of ", batch_pairs: int = 32,
                  predictions: Optional[list] = None) -> dict[str, Any]:
    """{"per_category": {cat: pair accuracy}, "mean": mean over categories, "overall": over all
    pairs, "pairs": n, "pairs_per_category": {cat: n}}. Pass a list as `predictions` to receive one record per pair."""
    pairs = read_pairs(folder)
    correct: "OrderedDict[str, list[int]]" = OrderedDict()
    for i in range(0, len(pairs), batch_pairs):
        chunk = pairs[i:i + batch_pairs]
        imgs = torch.stack([preprocess(_load(p)) for pr in chunk for p in pr["images"]]).to(device)
        texts = tokenizer([prefix + s for pr in chunk for s in pr["statements"]]).to(device)
        fi = model.encode_image(imgs, normalize=True).float().view(len(chunk), 2, -1)
        ft = model.encode_text(texts, normalize=True).float().view(len(chunk), 2, -1)
        sims = torch.einsum("ptd,pid->pti", ft, fi)  # [pair, statement, image]
        for pr, s in zip(chunk, sims):
            # the reference predicts image 1 iff softmax prob > 0.5, i.e. strictly more similar;
            # a tie goes to image 2, as there
            pred = tuple(0 if s[t, 0] > s[t, 1] else 1 for t in range(2))
            ok = int(pred == pr["gt"])
            correct.setdefault(pr["category"], []).append(ok)
            if predictions is not None:
                predictions.append({"qids": list(pr["qids"]), "category": pr["category"], "pred": list(pred),
                                    "gt": list(pr["gt"]), "correct": bool(ok), "sims": s.tolist()})
    per_cat = {c: sum(v) / len(v) for c, v in correct.items()}
    n = sum(len(v) for v in correct.values())
    return {"per_category": per_cat, "mean": sum(per_cat.values()) / len(per_cat),
            "overall": sum(sum(v) for v in correct.values()) / n, "pairs": n,
            "pairs_per_category": {c: len(v) for c, v in correct.items()}}
