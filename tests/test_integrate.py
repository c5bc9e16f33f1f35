"""Cross-stage integration: similarity = (weighted) mean of stage similarities; one-file round trip."""
import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcl_dist.core.files import save_torch
from mcl_dist.integration.integrated_model import IntegratedModel, load_model, save_integrated, stage_weights

NAME = "mcl-test-tiny-integrate"
CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
       "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    with open(os.path.join(d, f"{NAME}.json"), "w") as f:
        json.dump(CFG, f)
    open_clip.add_model_config(str(d))
    models = []
    for seed in (0, 1):  # two stages with different random weights
        torch.manual_seed(seed)
        models.append(open_clip.create_model(NAME).eval())
    return models


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    tokens = open_clip.get_tokenizer(NAME)(["a red square", "a blue bar", "two green dots"])
    return torch.randn(4, 3, 32, 32, generator=g), tokens


def stage_sims(models, x, t):
    with torch.no_grad():
        return [F.normalize(m.encode_image(x), dim=-1) @ F.normalize(m.encode_text(t), dim=-1).T for m in models]


def test_integrated_similarity_is_mean_of_stage_similarities(stages, inputs):
    x, t = inputs
    sims = stage_sims(stages, x, t)
    assert not torch.allclose(sims[0], sims[1], atol=1e-3)  # the stages really differ
    model = IntegratedModel(stages).eval()
    with torch.no_grad():
        fi, ft = model.encode_image(x), model.encode_text(t)
    assert fi.shape == (4, 64) and ft.shape == (3, 64)
    torch.testing.assert_close(fi.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(fi @ ft.T, (sims[0] + sims[1]) / 2, atol=1e-5, rtol=0)


def test_weighted_similarity(stages, inputs):
    x, t = inputs
    sims = stage_sims(stages, x, t)
    model = IntegratedModel(stages, weights=[1.0, 3.0]).eval()
    with torch.no_grad():
        got = model.encode_image(x) @ model.encode_text(t).T
    torch.testing.assert_close(got, (1 * sims[0] + 3 * sims[1]) / 4, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        IntegratedModel(stages, weights=[1.0])


def test_save_load_round_trip(stages, inputs, tmp_path):
    from open_clip.factory import _MODEL_CONFIGS

    x, t = inputs
    path = str(tmp_path / "integrated.pt")
    save_integrated(path, [NAME, NAME], [m.state_dict() for m in stages], [1.0, 2.0], CFG)
    raw = torch.load(path, weights_only=True)  # only plain types and tensors inside
    assert raw["model_names"] == [NAME, NAME] and raw["weights"] == [1.0, 2.0]
    saved_cfg = _MODEL_CONFIGS.pop(NAME)  # the file alone must be enough to rebuild the stages
    try:
        model, preprocess, tokenizer = load_model(path)
    finally:
        _MODEL_CONFIGS[NAME] = saved_cfg
    ref = IntegratedModel(stages, weights=[1.0, 2.0]).eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), ref.encode_image(x))
        assert torch.equal(model.encode_text(t), ref.encode_text(t))
    assert isinstance(model, IntegratedModel)
    assert torch.equal(tokenizer(["a red square"]), open_clip.get_tokenizer(NAME)(["a red square"]))
    from PIL import Image
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_cka_weightings_are_label_free_rules_on_the_stage_cka():
    cka = [None, 0.95, 0.4]  # stage 1 repeats the earlier stages, stage 2 is new
    assert stage_weights("equal", cka) == [1.0, 1.0, 1.0]
    assert stage_weights("cka_drop", cka, threshold=0.9) == [1.0, 0.0, 1.0]
    assert stage_weights("cka_weight", cka) == pytest.approx([1.0, 0.05, 0.6])


def test_dropped_stage_is_absent_from_both_towers_and_loading_keeps_the_choice(stages, inputs, tmp_path):
    """model.integration_weights=cka_drop that dropped stage 1: the integrated image and text
    features, saved and loaded again, score exactly as stage 0 alone (the other stage's block is 0)."""
    x, t = inputs
    weights = stage_weights("cka_drop", [None, 0.97], threshold=0.9)
    path = str(tmp_path / "dropped.pt")
    save_integrated(path, [NAME, NAME], [m.state_dict() for m in stages], weights, CFG)
    model, _, _ = load_model(path)
    assert model.weights == [1.0, 0.0]
    sims = stage_sims(stages, x, t)
    with torch.no_grad():
        fi, ft = model.encode_image(x), model.encode_text(t)
    assert torch.count_nonzero(fi[:, 32:]) == 0 and torch.count_nonzero(ft[:, 32:]) == 0
    torch.testing.assert_close(fi @ ft.T, sims[0], atol=1e-5, rtol=0)


def test_stage_checkpoint_loads_here_and_in_open_clip(stages, inputs, tmp_path):
    x, _ = inputs
    path = str(tmp_path / "checkpoint.pt")
    save_torch({"state_dict": stages[1].state_dict(), "model_name": NAME, "model_config": CFG}, path)
    model, _, _ = load_model(path)
    plain = open_clip.create_model(NAME, pretrained=path).eval()  # stage files stay open_clip checkpoints
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), stages[1].encode_image(x))
        assert torch.equal(plain.encode_image(x), stages[1].encode_image(x))


def test_conflicting_registered_config_gets_an_alias(stages, tmp_path):
    other = dict(CFG, embed_dim=16)
    from mcl_dist.objectives.clip import _register

    alias = _register(NAME, other)  # NAME already holds CFG: must not be overwritten
    assert alias != NAME and open_clip.create_model(alias).text_projection.shape[-1] == 16
    path = str(tmp_path / "checkpoint.pt")
    save_torch({"state_dict": stages[0].state_dict(), "model_name": NAME, "model_config": CFG}, path)
    model, _, _ = load_model(path)
    assert model.text_projection.shape[-1] == 32


class _ImageOnly(nn.Module):
    """An image-only backbone (SimCLR-style): a linear map of the flattened image."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(12, 8)

    def encode_image(self, x, normalize=False):
        return self.fc(x.flatten(1))


def test_image_only_backbones():
    a, b = _ImageOnly(0), _ImageOnly(1)
    model = IntegratedModel([a, b])
    x = torch.randn(5, 3, 2, 2)
    f = model.encode_image(x)
    want = (F.normalize(a.encode_image(x), dim=-1) @ F.normalize(a.encode_image(x), dim=-1).T
            + F.normalize(b.encode_image(x), dim=-1) @ F.normalize(b.encode_image(x), dim=-1).T) / 2
    torch.testing.assert_close(f @ f.T, want, atol=1e-5, rtol=0)
    assert torch.isclose(model.logit_scale.exp(), torch.tensor(100.0))
    with pytest.raises(TypeError, match="no text tower"):
        model.encode_text(torch.zeros(1, 4, dtype=torch.long))


def test_load_errors(tmp_path):
    path = str(tmp_path / "bad.pt")
    save_torch({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="model_name"):
        load_model(path)
    save_torch({"something": 1}, path)
    with pytest.raises(ValueError, match="neither"):
        load_model(path)


class _Scaled(nn.Module):
    """A stage whose features are `factor` times longer (same directions)."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def encode_image(self, x, normalize=False):
        return self.model.encode_image(x) * self.factor

    def encode_text(self, t, normalize=False):
        return self.model.encode_text(t) * self.factor


def test_raw_integration_is_the_public_codes_and_differs_from_ours(stages, inputs, tmp_path):
    """raw: torch.cat of raw features, then normalise (MajorDavidZhang/MCL MMVP.ipynb); a stage with
    longer features then dominates, while 'normalized' keeps the plain mean of the stage similarities."""
    x, t = inputs
    scaled = [stages[0], _Scaled(stages[1], 10.0)]
    raw = IntegratedModel(scaled, integration="raw").eval()
    ours = IntegratedModel(scaled).eval()
    with torch.no_grad():
        ref_i = F.normalize(torch.cat([m.encode_image(x) for m in scaled], dim=1), dim=-1)
        ref_t = F.normalize(torch.cat([m.encode_text(t) for m in scaled], dim=1), dim=-1)
        torch.testing.assert_close(raw.encode_image(x), ref_i, atol=1e-6, rtol=0)
        torch.testing.assert_close(raw.encode_text(t), ref_t, atol=1e-6, rtol=0)
        sims = stage_sims(stages, x, t)
        torch.testing.assert_close(ours.encode_image(x) @ ours.encode_text(t).T, (sims[0] + sims[1]) / 2,
                                   atol=1e-5, rtol=0)  # the scale does not matter to ours
        got = raw.encode_image(x) @ raw.encode_text(t).T
    assert (got - sims[1]).abs().max() < 0.1 * (got - (sims[0] + sims[1]) / 2).abs().max()  # stage 1 dominates
    with pytest.raises(ValueError, match="integration must be one of normalized, raw"):
        IntegratedModel(stages, integration="mean")


def test_integration_choice_survives_save_and_load(stages, inputs, tmp_path):
    x, _ = inputs
    path = str(tmp_path / "raw.pt")
    save_integrated(path, [NAME, NAME], [m.state_dict() for m in stages], None, CFG, integration="raw")
    model, _, _ = load_model(path)
    assert model.integration == "raw"
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), IntegratedModel(stages, integration="raw").encode_image(x))
    old = torch.load(path, weights_only=True)
    del old["integration"]  # a file from before the choice existed
    save_torch(old, path)
    assert load_model(path)[0].integration == "normalized"


def test_raw_scaling_then_cka_drop_weights_compose_and_survive_save_and_load(stages, inputs, tmp_path):
    """model.integration=raw with model.integration_weights=cka_drop: the weights apply after the
    per-stage scaling, so the dropped stage's block is 0 and the kept stages keep their RAW features
    (the longer one weighs more), not normalised ones; the file keeps both choices."""
    x, t = inputs
    models = [stages[0], stages[1], stages[0]]  # stage 2 repeats stage 0: CKA 1, dropped
    weights = stage_weights("cka_drop", [None, 0.3, 1.0], threshold=0.9)
    assert weights == [1.0, 1.0, 0.0]
    path = str(tmp_path / "raw_dropped.pt")
    save_integrated(path, [NAME] * 3, [m.state_dict() for m in models], weights, CFG, integration="raw")
    saved = torch.load(path, weights_only=True)
    assert saved["integration"] == "raw" and saved["weights"] == [1.0, 1.0, 0.0]
    model, _, _ = load_model(path)
    assert model.integration == "raw" and model.weights == [1.0, 1.0, 0.0]
    with torch.no_grad():
        raw_i = [m.encode_image(x) for m in stages]
        raw_t = [m.encode_text(t) for m in stages]
        fi, ft = model.encode_image(x), model.encode_text(t)
        normed = IntegratedModel(models, weights).eval().encode_image(x)
    # stage 0 and 1 have raw features of different lengths, so raw and normalised scaling differ
    assert not torch.allclose(raw_i[0].norm(dim=-1), raw_i[1].norm(dim=-1), rtol=0.05)
    torch.testing.assert_close(fi, F.normalize(torch.cat([*raw_i, torch.zeros_like(raw_i[0])], 1), dim=-1),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(ft, F.normalize(torch.cat([*raw_t, torch.zeros_like(raw_t[0])], 1), dim=-1),
                               atol=1e-6, rtol=0)
    assert not torch.allclose(fi, normed, atol=1e-3)
    torch.testing.assert_close(normed, F.normalize(torch.cat([F.normalize(f, dim=-1) for f in raw_i]
                                                             + [torch.zeros_like(raw_i[0])], 1), dim=-1),
                               atol=1e-6, rtol=0)


def test_both_integration_choices_are_settings_of_the_integrate_step_only():
    """Either choice, or both, changes the integrate step's fingerprint and no training step's, so a
    finished run is re-integrated with --redo integrate, never retrained; the defaults add nothing
    (runs made before the choices keep their fingerprints)."""
    from mcl_dist.config.load import load_config
    from mcl_dist.steps import IntegrateStep, TrainStep

    base = ["data.synthetic=true", "stages=[{}, {k: 4}]"]
    default = load_config(None, base)
    raw = load_config(None, base + ["model.integration=raw"])
    both = load_config(None, base + ["model.integration=raw", "model.integration_weights=cka_drop"])
    assert IntegrateStep(default).result_settings() == {}
    assert IntegrateStep(raw).result_settings() == {"integration": "raw"}
    assert IntegrateStep(both).result_settings() == {"integration": "raw", "weights": "cka_drop",
                                                     "redundant_cka": 0.9, "samples": 2048}
    for s in (0, 1):
        assert TrainStep(both, stage=s).result_settings() == TrainStep(default, stage=s).result_settings()
    assert "raw features" in IntegrateStep(both).describe(1) and "cka_drop weights" in IntegrateStep(both).describe(1)


def test_first_last_keeps_stage_0_and_the_last_stage_whatever_the_cka():
    assert stage_weights("first_last", [None, 0.2, 0.99, 0.5]) == [1.0, 0.0, 0.0, 1.0]
    assert stage_weights("first_last", [None, 0.99]) == [1.0, 1.0]
    assert stage_weights("first_last", [None]) == [1.0]


def test_first_last_step_integrates_stage_0_and_the_last_without_reading_any_data(stages, inputs, tmp_path):
    """model.integration_weights=first_last on three stages: the integrate step writes a model whose
    similarity is the mean of stage 0's and stage 2's, with no shards to read (the CKA rules would
    need them), and its fingerprint names the rule without the CKA settings."""
    from mcl_dist.config.load import load_config
    from mcl_dist.run.run_context import RunContext, integrated_path
    from mcl_dist.steps import IntegrateStep

    x, t = inputs
    cfg = load_config(None, ["data.synthetic=true", "stages=[{}, {k: 4}, {k: 4}]", "model.integration_weights=first_last"])
    models = [stages[0], stages[1], stages[1]]
    ctx = RunContext(cfg=cfg, run_dir=str(tmp_path / "run"))  # no urls: reading a sample would fail
    for s, m in enumerate(models):
        os.makedirs(ctx.stage_dir(s))
        save_torch({"state_dict": m.state_dict(), "model_name": NAME, "model_config": CFG},
                   os.path.join(ctx.stage_dir(s), "checkpoint.pt"))
    step = IntegrateStep(cfg)
    assert step.run(ctx)["weights"] == [1.0, 0.0, 1.0]
    assert step.result_settings() == {"weights": "first_last"} and "first_last weights" in step.describe(1)
    model, _, _ = load_model(integrated_path(ctx.run_dir))
    sims = stage_sims(models, x, t)
    with torch.no_grad():
        fi, ft = model.encode_image(x), model.encode_text(t)
    torch.testing.assert_close(fi @ ft.T, (sims[0] + sims[2]) / 2, atol=1e-5, rtol=0)
    assert not torch.allclose(fi @ ft.T, (sims[0] + sims[1] + sims[2]) / 3, atol=1e-3)
