"""Frozen-feature evaluation: feature extraction, logistic-regression probe and k-NN.

The probe is a multinomial logistic regression fitted full-batch with L-BFGS on standardised
features (zero init, fixed seed, CPU float64), so the same features always give the same number:
a stage comparison then measures the features, not optimiser noise.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger("mcl_dist")


@torch.no_grad()
def extract_features(model: Any, preprocess: Callable, images: Iterable[tuple[Image.Image, int]], device: Any = "cpu",
                     batch_size: int = 256, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [n, d] float32 on CPU, labels [n] int64) of an iterable of (PIL image, class index)."""
    feats, labels, batch, batch_y = [], [], [], []

    def flush() -> None:
        x = torch.stack(batch).to(device)
        feats.append(model.encode_image(x, normalize=normalize).float().cpu())
        labels.extend(batch_y)
        batch.clear()
        batch_y.clear()

    for img, y in images:
        batch.append(preprocess(img))
        batch_y.append(int(y))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError("extract_features: no images")
    return torch.cat(feats), torch.tensor(labels, dtype=torch.long)


def _as_tensors(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(x, dtype=torch.float64).cpu(), torch.as_tensor(y, dtype=torch.long).cpu()


def linear_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, seed: int = 0, epochs: int = 100,
                 lr: float = 1.0, wd: float = 1e-4, num_classes: Optional[int] = None) -> dict[str, Any]:
    """Logistic regression on frozen features. `epochs` = L-BFGS iterations, `wd` = L2 penalty
    on the weights (not the bias). Returns test and train top-1 accuracy."""
    train_x, train_y = _as_tensors(train_x, train_y)
    test_x, test_y = _as_tensors(test_x, test_y)
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"linear_probe: {len(train_x)} training and {len(test_x)} test samples")
    c = num_classes or int(max(train_y.max(), test_y.max())) + 1
    # standardise with training statistics: L-BFGS converges in few steps on a well-scaled problem
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    # zero init + full-batch L-BFGS: nothing random, so `seed` only goes into the record
    w = torch.zeros(xs.shape[1], c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, train_y) + wd * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = ((xs @ w + b).argmax(1) == train_y).double().mean().item()
        test_acc = ((xt @ w + b).argmax(1) == test_y).double().mean().item()
    return {"top1": test_acc, "train_top1": train_acc, "n_train": len(train_y), "n_test": len(test_y),
            "classes": c, "seed": seed}


def knn_accuracy(train_x: Any, train_y: Any, test_x: Any, test_y: Any, k: int = 20,
                 chunk: int = 1024) -> dict[str, Any]:
    """Cosine k-NN: each test sample's class is the one with the largest summed similarity among
    its k nearest training samples (similarity weighting breaks vote ties deterministically)."""
    train_x, train_y = _as_tensors(train_x, train_y)
    test_x, test_y = _as_tensors(test_x, test_y)
    k = min(k, len(train_x))
    c = int(max(train_y.max(), test_y.max())) + 1
    tr = F.normalize(train_x, dim=1)
    correct = 0
    for i in range(0, len(test_x), chunk):  # chunks bound memory at chunk x n_train
        sims = F.normalize(test_x[i:i + chunk], dim=1) @ tr.T
        top_s, top_i = sims.topk(k, dim=1)
        votes = torch.zeros(len(top_s), c, dtype=torch.float64).scatter_add_(1, train_y[top_i], top_s)
        correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return {"top1": correct / len(test_y), "k": k, "n_train": len(train_y), "n_test": len(test_y)}
