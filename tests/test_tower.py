"""The benchmark's toy tower (configs/models/tiny-vit-p4.json) and the training options the
feature-suppression benchmark uses: no augmentation for synthetic data, warm-up as a share."""
import io
import math
import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError, TrainConfig
from mcl_dist.core.files import save_torch
from mcl_dist.model.open_clip_models import create, stage_checkpoint
from mcl_dist.objectives import get_objective
from mcl_dist.training.lr_schedule import warmup_steps

from conftest import ROOT, cosine_lr

TOWER = os.path.join(ROOT, "configs/models/tiny-vit-p4.json")


def test_tower_checkpoint_loads_in_open_clip_and_sees_4px_patches(tmp_path):
    cfg = load_config(None, ["data.synthetic=true", f"model.config_file={TOWER}"])
    torch.manual_seed(0)
    bundle = create(cfg.model, torch.device("cpu"))
    path = str(tmp_path / "stage.pt")
    save_torch(stage_checkpoint(bundle["model"], bundle["name"], bundle["config"], stage=0), path)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-vit-p4", pretrained=path)
    model.eval(), bundle["model"].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), bundle["model"].encode_image(x))
    assert model.visual.conv1.kernel_size == (4, 4)  # 64 patches + class token at 32 px
    assert model.visual.positional_embedding.shape == (65, 64)  # learned positions: quadrants are visible


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_augment_false_trains_on_the_whole_image():
    """open_clip's random-resized crop can cut the 2 px frame; data.augment=false keeps every pixel."""
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:2], arr[-2:], arr[:, :2], arr[:, -2:] = 200, 200, 200, 200  # a 2 px frame
    raw = {"__key__": "k", "png": _png(arr), "txt": b"a frame"}
    for augment, same in ((False, True), (True, False)):
        cfg = load_config(None, ["data.synthetic=true", f"model.config_file={TOWER}", f"data.augment={augment}"])
        bundle = create(cfg.model, torch.device("cpu"))
        dec = get_objective(cfg).train_decoder(bundle)
        torch.manual_seed(1)
        views = [dec(raw)["image"] for _ in range(4)]
        assert all(torch.equal(v, views[0]) for v in views) == same
        if not augment:  # every pixel kept: the 2 px border is the frame, the centre is black
            img = views[0]
            assert img.shape == (3, 32, 32)
            assert (img[:, :2, :].mean() - img[:, 8:24, 8:24].mean()) > 2.0  # in normalised units
            assert torch.allclose(img[:, :2, :], img[:, :2, :].mean(dim=(1, 2), keepdim=True).expand(3, 2, 32), atol=0.05)
    with pytest.raises(ConfigError, match="'data.augment' false applies to CLIP only"):
        load_config(None, ["data.synthetic=true", "objective=simclr", "data.augment=false"])


def test_warmup_share_scales_with_each_stage():
    t = TrainConfig(warmup_steps=20, warmup_share=0.05)
    assert [warmup_steps(t, n) for n in (2000, 500, 400, 10)] == [100, 25, 20, 1]
    assert warmup_steps(TrainConfig(warmup_steps=20), 500) == 20  # share 0: the fixed count
    lrs = [cosine_lr(s, 1.0, warmup_steps(t, 500), 500) for s in range(500)]
    assert lrs[24] == 1.0 and lrs[0] == pytest.approx(1 / 25) and lrs[-1] < 1e-3
    assert all(a < b for a, b in zip(lrs[:24], lrs[1:25])) and math.isclose(max(lrs), 1.0)
    with pytest.raises(ConfigError, match=r"'train.warmup_share' must be in \[0, 1\)"):
        load_config(None, ["data.synthetic=true", "train.warmup_share=1.5"])
