"""What the locks save, checked on the tiny config: locked blocks build no autograd graph, get no
gradient and no optimizer state; and the FLOP counter behind MFU counts only what runs
(mcl_dist/bench/flops.py), against a hand count."""
import os

import torch

from conftest import ROOT
from mcl_dist.bench.flops import mfu, peak_tflops, step_flops
from mcl_dist.bench.throughput import ModelOnly, Recipe

TINY = os.path.join(ROOT, "configs/models/tiny-vit.json")


def test_flops_hand_count_locked_first_layer():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                            torch.nn.Linear(16, 4))
    m[0].requires_grad_(False)  # locked: forward only
    b = 5
    got = step_flops(lambda: m(torch.randn(b, 8)).square().sum())
    assert got["forward"] == 2 * b * (8 * 16 + 16 * 16 + 16 * 4)
    # layer 2: weight gradient only (its input needs none); layer 3: weight and input gradients
    assert got["backward"] == 2 * b * 16 * 16 + 2 * (2 * b * 16 * 4)
    assert got["total"] == got["forward"] + got["backward"]


def test_flops_locked_towers_count_forward_only():
    def counted(**locks):
        torch.manual_seed(0)
        r = Recipe(batch_per_gpu=4, precision="fp32", **locks)
        return ModelOnly(r, torch.device("cpu"), TINY).flops()

    full = counted()
    locked = counted(lock_image=True, lock_image_unlocked_groups=1, lock_text=True)  # only the projection learns
    assert locked["forward"] == full["forward"]  # the forward is the same work
    assert 1.8 * full["forward"] <= full["backward"] <= 2.1 * full["forward"]  # ~2x forward when all learn
    assert locked["backward"] < 0.1 * locked["forward"]  # the towers' backward is not run at all
    assert full["per_sample"] == full["total"] / 4


def test_locked_blocks_no_graph_no_grad_no_optimizer_state():
    torch.manual_seed(0)
    r = Recipe(batch_per_gpu=4, precision="fp32", lock_image=True, lock_image_unlocked_groups=2, lock_text=True)
    mo = ModelOnly(r, torch.device("cpu"), TINY)
    model = mo.engine.module
    blocks = model.visual.transformer.resblocks  # 2 blocks; groups: [stem], block 0, [block 1 + ln_post], proj
    seen = {}
    hooks = [blk.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, out.requires_grad))
             for i, blk in enumerate(blocks)]
    hooks += [model.transformer.resblocks[0].register_forward_hook(
        lambda mod, inp, out: seen.__setitem__("text", out.requires_grad))]
    mo.step()
    for h in hooks:
        h.remove()
    assert seen == {0: False, 1: True, "text": False}  # no graph below the first unlocked block
    locked = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert locked and trainable
    assert all(p.grad is None for p in locked)
    state_ids = {id(p) for p in mo.engine.optimizer.state}
    group_ids = {id(p) for g in mo.engine.optimizer.param_groups for p in g["params"]}
    assert state_ids == group_ids == {id(p) for p in trainable}  # AdamW moments for trainable params only


def test_mfu_and_peaks():
    assert peak_tflops("NVIDIA H200") == 989.4 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("cpu") is None
    assert mfu(100.0, 3e12, 1e15) == 0.3
