"""train.precision=amp: fp16 autocast with torch's GradScaler (open_clip_train's --precision amp) on the
DDP engine; DeepSpeed refuses it at config load with one message (real torch, CPU autocast)."""
import pytest
import torch

from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError, TrainConfig
from mcl_dist.training.deepspeed_config import DEEPSPEED_AMP
from mcl_dist.training.engine import DDPEngine


def engine(precision="amp", **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    tcfg = TrainConfig(precision=precision, warmup_steps=0, lr_scheduler="const", lr=0.1, **kw)
    return DDPEngine(model, tcfg, torch.device("cpu"), total_steps=10, base_lr=0.1)


def test_amp_is_fp16_autocast_with_a_grad_scaler():
    e = engine()
    assert isinstance(e.scaler, torch.amp.GradScaler) and e.dtype is torch.float16
    out = e.forward(torch.randn(3, 4))
    assert out.dtype is torch.float16
    before = e.module.weight.detach().clone()
    e.backward(out.float().mean())
    # the gradient was scaled by the scaler's 65536 and is unscaled in step()
    assert e.module.weight.grad.abs().max() > 100  # dL/dw of a mean is < 2 here
    e.step()
    assert not torch.equal(before, e.module.weight)
    state = e.state_dict()
    assert state["scaler"]["scale"] == 65536.0
    assert engine("amp_bf16").scaler is None and "scaler" not in engine("amp_bf16").state_dict()


def test_amp_skips_a_step_with_inf_gradients_and_lowers_the_scale():
    e = engine()
    before = e.module.weight.detach().clone()
    e.backward(e.forward(torch.randn(3, 4)).float().sum() * float("inf"))
    e.step()
    assert torch.equal(before, e.module.weight)  # skipped, as open_clip_train's scaler.step does
    assert e.state_dict()["scaler"]["scale"] == 32768.0
    fresh = engine()
    fresh.load_state_dict(e.state_dict())  # resume keeps the lowered scale
    assert fresh.scaler.get_scale() == 32768.0


def test_amp_with_clipping_clips_the_unscaled_gradient():
    e = engine(grad_clip_norm=1e9)
    e.backward(e.forward(torch.randn(3, 4)).float().mean())
    norm = e.step()
    assert 0 < norm < 1000  # unscaled: a scaled norm would be ~65536x larger


def test_deepspeed_refuses_fp16_amp(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {synthetic: true}\ntrain: {engine: deepspeed, precision: amp}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value) == f"{path}: {DEEPSPEED_AMP}"
    from mcl_dist.training.engine_deepspeed import build_ds_config

    with pytest.raises(ConfigError, match="not supported with train.engine=deepspeed"):
        build_ds_config(TrainConfig(engine="deepspeed", precision="amp"), 1, torch.device("cpu"))
