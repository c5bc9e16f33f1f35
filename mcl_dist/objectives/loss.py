"""Label-masked contrastive losses: CLIP InfoNCE and SimCLR's NT-Xent.

MCL's feature-aware negative sampling: an anchor's negatives are only the samples that share its
pseudo-label. A micro-batch normally holds several label groups (docs/design.md section 7), so the logits
of pairs with different labels are set to -inf before the cross-entropy; the positive always has
the anchor's own label, so every row keeps a finite logit.

Weighting: the mean over all rows of the micro-batch (a label group of n rows weighs n / batch).
With labels=None, or every label equal, no mask is applied at all, so the value and gradients are
exactly open_clip's ClipLoss.

Gathering (gather=True) concatenates features and labels from all ranks with the gathers of
`core/distributed.py` (with gradient through every rank's rows, or only this rank's own); ranks may
hold micro-batches of different lengths. Without a process group gather is a no-op.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mcl_dist.core import distributed as dist_utils


def gather_batch(tensors: list[Optional[torch.Tensor]], with_grad: bool = True) -> tuple[list, int]:
    """All-gather several aligned tensors; returns them and this rank's row offset in the result."""
    ref = next(t for t in tensors if t is not None)
    if dist_utils.world_size() == 1:
        return tensors, 0
    sizes = dist_utils.gather_sizes(ref.shape[0], ref.device)
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
        elif with_grad and t.requires_grad:
            out.append(dist_utils.gather_with_grad(t, sizes))
        else:
            out.append(dist_utils.gather_no_grad(t, sizes))
    return out, sum(sizes[: dist_utils.rank()])


def negative_mask(row_labels: Optional[torch.Tensor], col_labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """True where a column is a negative of another label (to exclude); None when there is none,
    so that the unmasked path is bit-for-bit the standard loss."""
    if row_labels is None or col_labels is None:
        return None
    mask = row_labels.view(-1, 1) != col_labels.view(1, -1)
    return mask if bool(mask.any()) else None


def _masked(logits: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    return logits if mask is None else logits.masked_fill(mask, float("-inf"))


class ClipLoss(nn.Module):
    """open_clip's CLIP loss with same-label negatives only (see the module docstring)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                labels: Optional[torch.Tensor] = None, gather: bool = False, gather_with_grad: bool = True,
                local_loss: bool = True) -> torch.Tensor:
        offset, all_labels = 0, labels
        if gather and dist_utils.world_size() > 1:
            (all_image, all_text, all_labels), offset = gather_batch([image_features, text_features, labels],
                                                                     with_grad=gather_with_grad)
            if local_loss:  # this rank's rows against every rank's columns
                logits_per_image = logit_scale * image_features @ all_text.T
                logits_per_text = logit_scale * text_features @ all_image.T
                row_labels = labels
            else:
                logits_per_image = logit_scale * all_image @ all_text.T
                logits_per_text = logits_per_image.T
                row_labels, offset = all_labels, 0
        else:  # the same expressions as open_clip, for identical numerics
            logits_per_image = logit_scale * image_features @ text_features.T
            logits_per_text = logit_scale * text_features @ image_features.T
            row_labels = labels
        mask = negative_mask(row_labels, all_labels)
        target = torch.arange(logits_per_image.shape[0], device=image_features.device) + offset
        return (F.cross_entropy(_masked(logits_per_image, mask), target) +
                F.cross_entropy(_masked(logits_per_text, mask), target)) / 2


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, labels: Optional[torch.Tensor] = None,
            gather: bool = False, gather_with_grad: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent on two views (cosine similarity / temperature), same-label negatives only.

    Rows are this rank's 2n views; columns are [all first views; all second views] (gathered when
    asked). A view's own column is excluded; its positive is the other view of the same sample.
    """
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    n = z1.shape[0]
    all1, all2, all_labels, offset = z1, z2, labels, 0
    if gather and dist_utils.world_size() > 1:
        (all1, all2, all_labels), offset = gather_batch([z1, z2, labels], with_grad=gather_with_grad)
    m = all1.shape[0]
    rows = torch.cat([z1, z2])
    logits = rows @ torch.cat([all1, all2]).T / temperature
    own = torch.arange(n, device=z1.device) + offset
    self_col = torch.cat([own, own + m])
    target = torch.cat([own + m, own])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=z1.device), self_col] = True
    row_labels = None if labels is None else torch.cat([labels, labels])
    col_labels = None if all_labels is None else torch.cat([all_labels, all_labels])
    mask = negative_mask(row_labels, col_labels)
    mask = is_self if mask is None else mask | is_self
    return F.cross_entropy(logits.masked_fill(mask, float("-inf")), target)
