"""Values no run can train with are refused where they are first known, with one `error:` line:
NaN or infinite floats and fractional epochs when the config loads, and a K larger than the
training samples at load (synthetic data), in the dry run (counted shards) and in the run's data
check (the shards' index), before stage 0 trains. Real config loading, the real entry point."""
import os

import pytest

from conftest import ROOT, tiny_config
from launch_helpers import error_lines, launch_here
from mcl_dist.commands.pretrain import main
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError

DEMO = os.path.join(ROOT, "configs/demo.yaml")


def dry_run_error(capsys, *argv) -> str:
    """The dry run's exit code 2 and its only stderr line, with nothing planned on stdout."""
    assert main(["--config", *argv, "--dry-run"]) == 2
    out = capsys.readouterr()
    assert len(out.err.strip().splitlines()) == 1 and "dry run of" not in out.out, out
    return out.err.strip()


@pytest.mark.parametrize("override", ["train.lr=.nan", "train.lr=nan", "train.lr=.inf", "train.wd=-.inf",
                                      "stages.1.lr=.nan", "cluster.kmeans_tol=.nan", "train.epochs=.inf",
                                      "model.integration_redundant_cka=.nan"])
def test_nan_and_inf_floats_are_refused_at_load(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [override])
    assert str(e.value).startswith(f"{override} (command line): '{key}' must be a finite number, got ")


def test_nan_in_the_yaml_file_blames_the_file(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text(open(DEMO).read().replace("lr: 1.0e-3", "lr: .nan"))
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value) == f"{path}: 'train.lr' must be a finite number, got nan"


def test_dry_run_refuses_nan_lr_k_over_the_samples_and_fractional_epochs(capsys):
    assert dry_run_error(capsys, DEMO, "train.lr=.nan") == \
        "error: train.lr=.nan (command line): 'train.lr' must be a finite number, got nan"
    assert dry_run_error(capsys, DEMO, "stages.1.k=5000") == (
        "error: stages.1.k=5000 (command line): 'stages.1.k' (5,000) is more than the 2,048 training samples "
        "(data.synthetic_train); k-means needs at least one sample per cluster: lower it, or set it to auto")
    assert dry_run_error(capsys, DEMO, "train.epochs=1.5") == (
        "error: train.epochs=1.5 (command line): 'train.epochs' must be a whole number of epochs, got 1.5; for part "
        "of an epoch set the steps instead (train.max_steps; the dry run prints the steps of one epoch)")
    assert dry_run_error(capsys, DEMO, "--epochs", "2.5").startswith(
        "error: --epochs 2.5: 'train.epochs' must be a whole number of epochs, got 2.5")
    assert dry_run_error(capsys, DEMO, "stages.2.epochs=0.5").startswith(
        "error: stages.2.epochs=0.5 (command line): 'stages.2.epochs' must be a whole number of epochs")


def test_whole_epochs_and_k_up_to_the_samples_pass():
    cfg = load_config(DEMO, ["train.epochs=2.0", "stages.1.epochs=1", "stages.1.k=2048", "stages.2.k=auto"])
    assert (cfg.train.epochs, cfg.stages[1].epochs, cfg.stages[1].k) == (2.0, 1.0, 2048)


def test_k_over_the_counted_shards_is_refused_by_the_dry_run(tmp_path, shards, capsys):
    cfg = tiny_config(tmp_path, shards, stages=[{}, {"k": 200, "group_size": 4}])  # 4 shards x 32 samples
    assert dry_run_error(capsys, cfg) == (
        f"error: {cfg}: 'stages.1.k' (200) is more than the 128 training samples (counted from the tar headers); "
        f"k-means needs at least one sample per cluster: lower it, or set it to auto")


def test_k_over_the_usable_samples_is_refused_by_the_data_check(tmp_path, shards, capsys):
    """data.num_samples is an epoch's length, not the shards' count: the dry run cannot tell, the run's
    data check (the shards' index) refuses before stage 0, and the run directory gets no config.yaml."""
    cfg = tiny_config(tmp_path, shards, stages=[{}, {"k": 200, "group_size": 4}])
    assert main(["--config", cfg, "--dry-run", "data.num_samples=1000"]) == 0
    capsys.readouterr()
    assert launch_here(cfg, tmp_path / "run", "data.num_samples=1000") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {cfg}: 'stages.1.k' (200) is more than the 128 training samples (usable samples in the shards); "
        f"k-means needs at least one sample per cluster: lower it, or set it to auto"]
    assert not os.path.exists(tmp_path / "run" / "stage_0") and not os.path.exists(tmp_path / "run" / "config.yaml")
