"""Config loading: typed schema, overrides, and clear errors for bad input."""
import os

import pytest

from mcl_dist.config.load import check_world, load_config
from mcl_dist.config.schema import ConfigError, save_config

from conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config(os.path.join(ROOT, "configs/demo.yaml"), ["train.lr=2e-4", "stages.1.k=64", "data.workers=0"])
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)
    assert cfg.stages[1].k == 64 and cfg.data.workers == 0
    assert len(cfg.stages) == 3 and all(s.init == "previous" for s in cfg.stages[1:])


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'.*did you mean 'train\.lr'"):
        load_config(write(tmp_path, "data: {synthetic: true}\ntrain: {lrr: 0.1}\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'stages\.1\.kk'.*did you mean 'stages\.1\.k'"):
        load_config(write(tmp_path, "data: {synthetic: true}\nstages: [{}, {kk: 3}]\n"))
    with pytest.raises(ConfigError, match=r"command-line override 'model\.nmae'.*did you mean 'model\.name'"):
        load_config(None, ["data.synthetic=true", "model.nmae=RN50"])


def test_wrong_types_and_impossible_values(tmp_path):
    with pytest.raises(ConfigError, match=r"'train\.global_batch_size' must be int, got str 'abc'"):
        load_config(None, ["data.synthetic=true", "train.global_batch_size=abc"])
    with pytest.raises(ConfigError, match=r"'train\.global_batch_size' must be positive, got -8"):
        load_config(None, ["data.synthetic=true", "train.global_batch_size=-8"])
    with pytest.raises(ConfigError, match=r"'stages\.0\.init' must be one of previous, base, scratch.*'previous'"):
        load_config(None, ["data.synthetic=true", "stages.0.init=previus"])
    with pytest.raises(ConfigError, match=r"'data\.train_shards' is empty"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_world_size_must_divide_batch():
    cfg = load_config(None, ["data.synthetic=true", "train.global_batch_size=100", "train.accum_freq=2"])
    check_world(cfg, 2)  # 100 = 2 ranks x 2 micro-steps x 25
    with pytest.raises(ConfigError, match=r"divisible by world size x 'train\.accum_freq' \(3 x 2\)"):
        check_world(cfg, 3)


def test_missing_shards_named():
    from mcl_dist.data.shards import expand_urls

    with pytest.raises(ConfigError, match=r"2 of 2 shards not found: /nonexistent/a-0\.tar"):
        expand_urls("/nonexistent/a-{0..1}.tar")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs/demo.yaml"), ["train.seed=7"])
    save_config(cfg, str(tmp_path / "out.yaml"))
    again = load_config(str(tmp_path / "out.yaml"))
    assert again.anchor == os.getcwd()  # where the relative paths resolve, recorded by the save
    again.anchor = ""
    assert again == cfg


def test_model_named_twice_is_refused_not_silently_the_config_file():
    demo = os.path.join(ROOT, "configs", "demo.yaml")
    with pytest.raises(ConfigError, match=r"model.name 'ViT-B-32' and model.config_file .*tiny-vit.json"):
        load_config(demo, ["model.name=ViT-B-32"])
    cfg = load_config(demo, ["model.name=ViT-B-32", "model.config_file="])
    assert (cfg.model.name, cfg.model.config_file) == ("ViT-B-32", "")
    # the config file's own stem is the same model, not a second one
    assert load_config(demo, ["model.name=tiny-vit"]).model.config_file.endswith("tiny-vit.json")
