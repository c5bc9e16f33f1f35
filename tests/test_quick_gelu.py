"""model.force_quick_gelu: the model uses QuickGELU and its checkpoint rebuilds with it."""
import os

import torch
from open_clip.transformer import QuickGELU

from conftest import ROOT
from mcl_dist.config.schema import ModelConfig
from mcl_dist.core.files import save_torch
from mcl_dist.integration.integrated_model import load_model
from mcl_dist.model.open_clip_models import create, stage_checkpoint


def activations(model):
    return {type(m).__name__ for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}


def test_force_quick_gelu_is_used_and_survives_the_checkpoint(tmp_path):
    tiny = os.path.join(ROOT, "configs/models/tiny-vit.json")
    plain = create(ModelConfig(config_file=tiny), torch.device("cpu"))
    assert activations(plain["model"]) == {"GELU"}
    torch.manual_seed(0)
    b = create(ModelConfig(config_file=tiny, force_quick_gelu=True), torch.device("cpu"))
    assert activations(b["model"]) == {"QuickGELU"} and b["config"]["quick_gelu"] is True
    path = str(tmp_path / "checkpoint.pt")
    save_torch(stage_checkpoint(b["model"], b["name"], b["config"], stage=0), path)
    model, preprocess, tokenizer = load_model(path)
    assert activations(model) == {"QuickGELU"}
    image, text = torch.randn(2, 3, 32, 32), tokenizer(["a red square", "a blue bar"])
    b["model"].eval()
    with torch.no_grad():
        assert torch.allclose(model.encode_image(image), b["model"].encode_image(image), atol=1e-6)
        assert torch.allclose(model.encode_text(text), b["model"].encode_text(text), atol=1e-6)
