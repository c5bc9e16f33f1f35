"""A run's config.yaml records where its relative paths resolve (`anchor`: the launch's working
directory), and readers in another directory resolve them there, not under their own directory."""
import os

import pytest
import yaml

from mcl_dist.commands.export_clip_benchmark import from_run
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import Config, anchored, save_config, saved_path
from mcl_dist.core import layout


def test_saved_path_resolves_relative_parts_only():
    assert saved_path("data/{0..1}.tar", "/runs/a") == "/runs/a/data/{0..1}.tar"
    assert saved_path("/abs/x.tar::rel/y.tar", "/a") == "/abs/x.tar::/a/rel/y.tar"
    assert saved_path("pipe:cat data/x.tar", "/a") == "pipe:cat data/x.tar"
    assert saved_path("s3://bucket/x.tar", "/a") == "s3://bucket/x.tar"
    assert saved_path("data/x.tar", "") == "data/x.tar"  # a run saved before anchors: unchanged


def test_save_config_records_the_launch_directory_and_loads_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config()
    cfg.data.train_shards, cfg.eval.test_shards = "data/train/{0..1}.tar", "data/test/{0..1}.tar"
    save_config(cfg, str(tmp_path / "config.yaml"))
    assert yaml.safe_load(open(tmp_path / "config.yaml"))["anchor"] == str(tmp_path)
    back = anchored(load_config(str(tmp_path / "config.yaml")))
    assert back.eval.test_shards == str(tmp_path / "data/test/{0..1}.tar")
    assert back.data.train_shards == str(tmp_path / "data/train/{0..1}.tar")


def _tars(root, names):
    os.makedirs(root, exist_ok=True)
    for n in names:
        open(os.path.join(root, n), "wb").close()


@pytest.mark.parametrize("anchored_run", [True, False])
def test_a_reader_elsewhere_takes_the_runs_own_data_not_its_own(tmp_path, monkeypatch, anchored_run):
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    _tars(launch / "data" / "test", ["0.tar", "1.tar"])
    _tars(elsewhere / "data" / "test", ["0.tar", "1.tar"])  # the same relative name, other data
    run_dir = launch / "runs" / "r"
    os.makedirs(run_dir)
    monkeypatch.chdir(launch)
    cfg = Config()
    cfg.eval.test_shards, cfg.eval.label_fields = "data/test/{0..1}.tar", ["shape"]
    save_config(cfg, layout.config_path(str(run_dir)))
    if not anchored_run:  # a run directory written before config.yaml had an anchor
        raw = yaml.safe_load(open(layout.config_path(str(run_dir))))
        raw.pop("anchor")
        open(layout.config_path(str(run_dir)), "w").write(yaml.safe_dump(raw))
    monkeypatch.chdir(elsewhere)
    shards, fields, _ = from_run(str(run_dir))
    assert os.path.samefile(os.path.dirname(shards), launch / "data" / "test") and fields == ["shape"]
