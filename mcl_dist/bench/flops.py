"""FLOPs of a training step as it runs, and model FLOP utilisation (MFU).

The count is taken by torch's own `FlopCounterMode` while one real step runs (forward, loss,
backward): every matrix product and attention kernel that is dispatched is counted (2 FLOPs per
multiply-add), nothing that is not. So a locked block at the bottom of a tower counts its
forward only (its parameters need no gradient and nothing below it does, so autograd records
nothing there), the first unlocked block counts forward + weight gradients (no gradient for its
input), and every block above it forward + weight + input gradients (~3x forward). Elementwise
work (norms, activations, softmax) is not counted, as in the usual MFU convention.

    MFU = samples/s x (step FLOPs / samples per step) / peak FLOP/s

with the device's dense bf16 peak from its data sheet (`PEAK_BF16_TFLOPS`); the GPU script also
reports it against a bf16 matmul rate it measures.
"""
from __future__ import annotations

from typing import Callable

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from mcl_dist.objectives.loss import ClipLoss

# dense (not sparse) bf16 tensor-core peak, TFLOP/s, data sheets; first match wins
PEAK_BF16_TFLOPS = [("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("B200", 2250.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]


def peak_tflops(device_name: str) -> float | None:
    return next((v for key, v in PEAK_BF16_TFLOPS if key in device_name), None)


def step_flops(forward_loss: Callable[[], torch.Tensor]) -> dict[str, int]:
    """FLOPs of one step: `forward_loss()` (the forward and the loss), then its backward."""
    with FlopCounterMode(display=False) as fwd:
        loss = forward_loss()
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    f, b = int(fwd.get_total_flops()), int(bwd.get_total_flops())
    return {"forward": f, "backward": b, "total": f + b}


def mfu(samples_per_s: float, flops_per_sample: float, peak_flops_per_s: float) -> float:
    return samples_per_s * flops_per_sample / peak_flops_per_s


def recipe_flops(model: str, lock_image_unlocked_groups: int | None = None, lock_text: bool = False,
                 quick_gelu: bool = True, batch: int = 4) -> dict:
    """FLOPs per sample of an open_clip model's training step with the given locks, counted on the
    meta device (shapes only: no memory, no arithmetic), and its trainable parameters.
    `lock_image_unlocked_groups=None` leaves the image tower unlocked."""
    net = open_clip.create_model(model, force_quick_gelu=quick_gelu, output_dict=True, device="meta")
    if lock_image_unlocked_groups is not None:
        net.lock_image_tower(unlocked_groups=lock_image_unlocked_groups)
    if lock_text:
        net.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    size = net.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    image = torch.randn(batch, 3, size, size, device="meta")
    text = torch.randint(0, net.vocab_size, (batch, net.context_length), device="meta")
    loss = ClipLoss()

    def forward_loss():
        out = net(image=image, text=text)
        return loss(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())

    counted = step_flops(forward_loss)
    return {"model": model, **{f"{k}_per_sample": v / batch for k, v in counted.items()},
            "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in net.parameters())}
