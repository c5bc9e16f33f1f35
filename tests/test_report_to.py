"""--report-to tensorboard,wandb as open_clip_train: one wandb run per trained stage, grouped by the
run directory (real wandb 0.31 in offline mode, a real two-stage tiny run in-process)."""
import glob
import json
import os

import pytest

from conftest import tiny_config
from mcl_dist.config.schema import ConfigError
from mcl_dist.training.loggers import parse_report_to, wandb_ids


def test_report_to_names_are_checked_at_load():
    assert parse_report_to(" tensorboard ") == ["tensorboard"]
    assert parse_report_to("") == [] and parse_report_to("none") == []
    if _has_wandb():
        assert parse_report_to("tensorboard,wandb") == ["tensorboard", "wandb"]
    else:  # refused at load, before stage 0, not when the first stage starts logging
        with pytest.raises(ConfigError, match="includes wandb but wandb is not installed; pip install -e .\\[wandb\\]"):
            parse_report_to("tensorboard,wandb")
    with pytest.raises(ConfigError, match="'train.report_to' names 'mlflow'; use a comma list of tensorboard, wandb"):
        parse_report_to("tensorboard,mlflow")


def _has_wandb():
    try:
        import wandb  # noqa: F401
        return True
    except ImportError:
        return False


def test_open_clip_flags_run_with_wandb_offline_one_run_per_stage(tmp_path, shards, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e .[wandb]); "
                                        "the lead's main venv lacks it, the dev extra has it")
    from mcl_dist.commands.pretrain import main

    wdir = tmp_path / "wandb_dir"
    wdir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wdir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path, shards, stages=[{}, {"k": 2, "group_size": 4}], **{"train.max_steps": 2})
    run = tmp_path / "logs" / "exp1"
    rc = main(["--config", cfg, "--batch-size", "8", "--lr", "2e-3", "--warmup", "1", "--report-to",
               "tensorboard,wandb", "--logs", str(tmp_path / "logs"), "--name", "exp1", "train.checkpoint_every=2"])
    assert rc == 0
    import yaml
    saved = yaml.safe_load(open(run / "config.yaml"))
    assert saved["train"]["global_batch_size"] == 8 and saved["train"]["lr"] == 2e-3  # 8 per rank x 1 rank
    assert saved["train"]["warmup_steps"] == 1 and saved["train"]["report_to"] == "tensorboard,wandb"
    runs = sorted(glob.glob(str(wdir / "wandb" / "offline-run-*")))
    assert len(runs) == 2, runs  # stage 0 and stage 1
    for s, path in enumerate(runs):
        ids = wandb_ids(str(run), s)
        assert path.endswith(ids["id"])
        blob = open(glob.glob(os.path.join(path, "*.wandb"))[0], "rb").read()
        assert ids["group"].encode() in blob and ids["name"].encode() in blob
        assert os.path.isdir(run / f"stage_{s}" / "tb")
    metrics = [json.loads(line) for line in open(run / "stage_1" / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [1, 2]


def test_logged_config_names_the_model_built_from_a_config_file():
    from mcl_dist.config.load import load_config
    from mcl_dist.training.loggers import logged_config

    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/demo.yaml"))
    assert cfg.model.config_file and logged_config(cfg)["model"]["name"] == "tiny-vit"
