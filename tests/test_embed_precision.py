"""The embed step's autocast (bf16 on a GPU by default) gives the same features as fp32: cosine
>= 0.999 per row. bf16 autocast runs on the CPU too, so this is checked here, on the tiny config
and on ViT-B-32 (random init, seeded: no download)."""
import os

import pytest
import torch

from conftest import ROOT
from mcl_dist.clustering.embedding import encode
from mcl_dist.config.schema import ModelConfig
from mcl_dist.model.open_clip_models import create
from mcl_dist.training.optim import autocast_dtype


@pytest.mark.launch
@pytest.mark.parametrize("mcfg", [ModelConfig(config_file=os.path.join(ROOT, "configs/models/tiny-vit.json")),
                                  ModelConfig(name="ViT-B-32", force_quick_gelu=True)], ids=["tiny-vit", "ViT-B-32"])
def test_bf16_features_match_fp32(mcfg):
    torch.manual_seed(0)
    bundle = create(mcfg, torch.device("cpu"))
    model = bundle["model"].eval()
    size = model.visual.image_size[0]
    batch = {"image": torch.randn(3, 3, size, size),
             "text": bundle["tokenizer"]([f"a photo of {w}" for w in ("a dog", "two cats", "a red car")])}
    for mode in ("image", "joint"):
        ref = encode(model, batch, mode, torch.device("cpu"))
        got = encode(model, batch, mode, torch.device("cpu"), torch.bfloat16)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert not torch.equal(got, ref)  # bf16 really ran
        cos = (got * ref).sum(1)
        assert cos.min() >= 0.999, (mode, cos)


def test_embed_precision_follows_train_precision():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None  # fp32 on CPU (tests, demo)
    assert autocast_dtype("auto", gpu) is torch.bfloat16
    assert autocast_dtype("fp32", gpu) is None


def test_embed_step_runs_at_train_precision(monkeypatch, tmp_path):
    """The step hands train.precision to embed_shards and records it in its settings (a resumed run
    at another precision must re-embed). embed_shards itself is replaced here only to read the
    argument: the real one runs in every pipeline test."""
    from conftest import write_test_shards
    from mcl_dist.config.schema import Config
    from mcl_dist.data.webdataset_data import WebDatasetData
    from mcl_dist.run.run_context import RunContext
    from mcl_dist.steps import embed_step

    seen = {}
    monkeypatch.setattr(embed_step, "load_stage_model", lambda ctx, s: {"model": None})
    monkeypatch.setattr(embed_step, "embed_shards", lambda *a, **kw: seen.update(kw) or {})
    settings, data = {}, WebDatasetData(write_test_shards(str(tmp_path / "d"), n_shards=1, per_shard=2)[0])
    for precision in ("fp32", "amp"):
        cfg = Config()
        cfg.train.precision = precision
        step = embed_step.EmbedStep(cfg, stage=1)
        step.run(RunContext(cfg=cfg, run_dir=str(tmp_path / precision), data=data))
        assert seen["precision"] == precision
        settings[precision] = step.result_settings()
    assert settings["fp32"] != settings["amp"]
