"""A QuickGELU stage loads with plain open_clip exactly as trained (its open_clip/ local-dir folder),
and mcl_dist warns where it rebuilds a stage with the other activation."""
import json
import os
import re
import warnings

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from conftest import ROOT, tiny_config
from launch_helpers import launch_here
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ModelConfig
from mcl_dist.core.files import save_torch
from mcl_dist.eval.clip_benchmark import _register_pretrained_runs
from mcl_dist.integration.integrated_model import load_model
from mcl_dist.model.open_clip_dir import CONFIG_NAME, INTEGRATION_NAME, WEIGHTS_NAME, integrated_folder, stage_folder
from mcl_dist.model.open_clip_models import QuickGeluMismatch, create, uses_quick_gelu
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step_helpers import load_stage_model

TINY = os.path.join(ROOT, "configs/models/tiny-vit.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory, shards):
    """One tiny ViT stage trained with model.force_quick_gelu (2 steps, world size 1)."""
    tmp = tmp_path_factory.mktemp("qg")
    cfg = tiny_config(tmp, shards, **{"model.force_quick_gelu": True, "train.max_steps": 2,
                                      "train.checkpoint_every": 2})
    assert launch_here(cfg, tmp / "run") == 0
    return cfg, str(tmp / "run")


def inputs(tokenizer):
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g), tokenizer(["a red square", "a blue bar", "two dots", "a cat"])


def features(model, image, text):
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


def test_stage_folder_loads_with_plain_open_clip_as_trained(run):
    _, run_dir = run
    ckpt = os.path.join(run_dir, "stage_0", "checkpoint.pt")
    trained, preprocess, tokenizer = load_model(ckpt)
    assert uses_quick_gelu(trained)
    folder = stage_folder(os.path.join(run_dir, "stage_0"))
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    model, _, oc_preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    oc_tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    assert uses_quick_gelu(model)
    image, text = inputs(tokenizer)
    assert torch.equal(text, inputs(oc_tokenizer)[1])
    for got, want in zip(features(model, image, text), features(trained, image, text)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    pil = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    assert torch.equal(oc_preprocess(pil), preprocess(pil))
    # what README's plain-checkpoint line did without force_quick_gelu: GELU, other features
    open_clip.add_model_config(TINY)
    gelu = open_clip.create_model_and_transforms("tiny-vit", pretrained=ckpt)[0].eval()
    assert not uses_quick_gelu(gelu)
    assert not torch.allclose(features(gelu, image, text)[0], features(trained, image, text)[0], atol=1e-4)
    forced = open_clip.create_model_and_transforms("tiny-vit", pretrained=ckpt, force_quick_gelu=True)[0].eval()
    torch.testing.assert_close(features(forced, image, text)[0], features(trained, image, text)[0], rtol=0, atol=1e-6)


def readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", open(os.path.join(ROOT, "README.md")).read(), re.S)
    return next(b for b in blocks if marker in b)


def test_readme_recipes_give_the_trained_and_integrated_features(run):
    """README's local-dir lines build the trained stage; its integrated recipe (each stage's folder
    with plain open_clip) gives the integrated model's features."""
    _, run_dir = run
    pil = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    trained, preprocess, tokenizer = load_model(os.path.join(run_dir, "stage_0", "checkpoint.pt"))
    ns: dict = {}
    exec(readme_block('get_tokenizer("local-dir:').replace("runs/demo", run_dir), ns)
    image, text = inputs(tokenizer)
    for got, want in zip(features(ns["model"].eval(), image, ns["tokenizer"](["a red square"])),
                         features(trained, image, tokenizer(["a red square"]))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    integrated = load_model(os.path.join(run_dir, "integrated", "model.pt"))[0]
    out = integrated_folder(run_dir)
    assert json.load(open(os.path.join(out, INTEGRATION_NAME))) == {
        "stages": ["stage_0"], "weights": [1.0], "integration": "normalized"}
    # a hard link to the stage's own file: no second copy on disk
    assert os.path.samefile(os.path.join(out, "stage_0", WEIGHTS_NAME),
                            os.path.join(stage_folder(os.path.join(run_dir, "stage_0")), WEIGHTS_NAME))
    ns = {"open_clip": open_clip, "preprocess": preprocess, "pil_image": pil}
    with torch.no_grad():
        exec(readme_block("integration.json").replace("runs/demo", run_dir), ns)
        want = integrated.encode_image(preprocess(pil)[None])
    assert all(uses_quick_gelu(m) for m in ns["models"])
    torch.testing.assert_close(ns["img"], want, rtol=0, atol=1e-6)


def test_rebuilding_without_quick_gelu_warns(run, tmp_path):
    cfg_path, run_dir = run
    ckpt = os.path.join(run_dir, "stage_0", "checkpoint.pt")
    # model.pretrained naming the checkpoint, without model.force_quick_gelu
    with pytest.warns(QuickGeluMismatch, match=r"trained with QuickGELU but built with GELU.*force_quick_gelu"):
        create(ModelConfig(config_file=TINY, pretrained=ckpt), torch.device("cpu"))
    # a stage model rebuilt by a step from a config that dropped it
    plain = load_config(cfg_path, ["model.force_quick_gelu=false"])
    with pytest.warns(QuickGeluMismatch, match="stage_0/checkpoint.pt: trained with QuickGELU"):
        load_stage_model(RunContext(plain, run_dir), 0)
    # load_model with a model_name that replaces a '-quickgelu' name
    sd = load_model(ckpt)[0].state_dict()
    cfg = json.load(open(TINY))
    for name, qg in (("tiny-test-quickgelu", True), ("tiny-test", False)):
        with open(tmp_path / f"{name}.json", "w") as f:
            json.dump({**cfg, "quick_gelu": qg}, f)
        open_clip.add_model_config(str(tmp_path / f"{name}.json"))
    path = str(tmp_path / "named.pt")
    save_torch({"state_dict": sd, "model_name": "tiny-test-quickgelu"}, path)
    with pytest.warns(QuickGeluMismatch, match="named.pt: trained with QuickGELU but built with GELU"):
        load_model(path, model_name="tiny-test")
    # clip_benchmark's own open_clip loader on the file
    argv = ["eval", "--model", "tiny-vit", "--pretrained", ckpt, "--task", "zeroshot_classification"]
    with pytest.warns(QuickGeluMismatch, match=f"--model {ckpt}"):
        _register_pretrained_runs(argv)
    # built as trained: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuickGeluMismatch)
        _register_pretrained_runs(["eval", "--model", "tiny-test-quickgelu", "--pretrained", ckpt])
        create(ModelConfig(config_file=TINY, pretrained=ckpt, force_quick_gelu=True), torch.device("cpu"))
        load_stage_model(RunContext(load_config(cfg_path), run_dir), 0)
        load_model(path)
        load_model(ckpt)
