"""train.precision=amp_fp16 (the paper's `--precision amp`): fp16 autocast with a loss scaler in
the DDP engine; the DeepSpeed engine refuses it with one line. fp16 autocast and the scaler run on
the CPU too, so this is checked here on the tiny config."""
import os

import pytest
import torch

from conftest import ROOT
from mcl_dist.bench.throughput import ModelOnly, Recipe
from mcl_dist.config import ConfigError
from mcl_dist.config_load import load_config

TINY = os.path.join(ROOT, "configs/models/tiny-vit.json")


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_fp16_steps_are_loss_scaled_and_resumable(clip):
    torch.manual_seed(0)
    mo = ModelOnly(Recipe(batch_per_gpu=4, precision="amp_fp16"), torch.device("cpu"), TINY)
    mo.engine.tcfg.grad_clip_norm = clip
    eng = mo.engine
    assert eng.dtype is torch.float16 and eng.scaler.is_enabled()
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
    other = ModelOnly(Recipe(batch_per_gpu=4, precision="amp_fp16"), torch.device("cpu"), TINY).engine
    other.load_state_dict(state)
    assert other.scaler.state_dict() == eng.scaler.state_dict()


def test_bf16_and_fp32_have_no_scaler_state():
    eng = ModelOnly(Recipe(batch_per_gpu=2, precision="fp32"), torch.device("cpu"), TINY).engine
    assert not eng.scaler.is_enabled() and "scaler" not in eng.state_dict()


def test_deepspeed_refuses_fp16(tmp_path):
    with pytest.raises(ConfigError, match="'train.precision' amp_fp16 needs train.engine=ddp"):
        load_config(os.path.join(ROOT, "configs/demo.yaml"), ["train.engine=deepspeed", "train.precision=amp_fp16"])
    assert load_config(os.path.join(ROOT, "configs/demo.yaml"), ["train.precision=amp_fp16"]).train.precision == "amp_fp16"
