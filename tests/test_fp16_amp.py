"""train.precision=amp (open_clip_train's `--precision amp`) on a real tiny CLIP, as the throughput
benchmark's model-only step runs it: fp16 really runs, the loss-scaled steps move the weights and
stay finite with and without clipping, and the scaler's state resumes. tests/test_precision.py
checks the scaler itself (scaling, skipped inf steps, unscaled clipping, DeepSpeed's refusal).
fp16 autocast and the GradScaler run on the CPU too, so this is checked here."""
import os

import pytest
import torch

from conftest import ROOT
from mcl_dist.bench.throughput import ModelOnly, Recipe

TINY = os.path.join(ROOT, "configs/models/tiny-vit.json")


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_amp_steps_on_clip_are_loss_scaled_and_resumable(clip):
    torch.manual_seed(0)
    mo = ModelOnly(Recipe(batch_per_gpu=4, precision="amp"), torch.device("cpu"), TINY)
    mo.engine.tcfg.grad_clip_norm = clip
    eng = mo.engine
    assert eng.dtype is torch.float16 and isinstance(eng.scaler, torch.amp.GradScaler)
    with eng.autocast():
        assert eng.model.visual.conv1(mo.image).dtype is torch.float16  # fp16 really runs
    before = [p.detach().clone() for p in eng.module.parameters() if p.requires_grad]
    for _ in range(3):
        mo.step()
    after = [p for p in eng.module.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.isfinite(p).all() for p in after)
    state = eng.state_dict()
    assert state["scaler"]["scale"] > 0 and state["scheduler"]["step"] == eng.step_count == 3
    other = ModelOnly(Recipe(batch_per_gpu=4, precision="amp"), torch.device("cpu"), TINY).engine
    other.load_state_dict(state)
    assert other.scaler.state_dict() == eng.scaler.state_dict()


def test_fp32_has_no_scaler_state():
    eng = ModelOnly(Recipe(batch_per_gpu=2, precision="fp32"), torch.device("cpu"), TINY).engine
    assert eng.scaler is None and "scaler" not in eng.state_dict()
