"""Every config error names where the bad value came from: the open_clip flag as typed
(`--precision fp16`), the key=value override as typed (`stages.1.k=0 (command line)`), or the YAML
file when the file set it; checks that run after loading (world size, group size) blame the same
way. The real entry point's dry run and real config loading."""
import os

import pytest

from conftest import ROOT, tiny_config
from mcl_dist.commands.pretrain import main
from mcl_dist.config.load import load_config
from mcl_dist.config.origins import Override
from mcl_dist.config.schema import ConfigError

DEMO = os.path.join(ROOT, "configs/demo.yaml")
PAPER = os.path.join(ROOT, "configs/cc12m_vit_l14_paper.yaml")
REMOTE = ("'data.train_shards' 's3://bucket/{0..7}.tar' is not a local path, and stages >= 1 read samples by random "
          "access (a tar index)")


def dry_run_error(capsys, *argv) -> str:
    assert main(["--config", *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_an_open_clip_flag_is_named_as_typed(capsys):
    assert dry_run_error(capsys, PAPER, "--precision", "fp16") == (
        "error: --precision fp16: 'train.precision' must be one of auto, fp32, amp, amp_bf16, bf16, got 'fp16'; "
        "did you mean 'bf16'?")
    assert dry_run_error(capsys, PAPER, "--train-data", "s3://bucket/{0..7}.tar").startswith(
        f"error: --train-data s3://bucket/{{0..7}}.tar: {REMOTE}")
    assert dry_run_error(capsys, DEMO, "--workers", "-1") == "error: --workers -1: 'data.workers' must be >= 0, got -1"


def test_an_override_is_named_as_typed_with_command_line(capsys):
    assert dry_run_error(capsys, PAPER, "stages.1.k=0") == \
        "error: stages.1.k=0 (command line): 'stages.1.k' must be an int >= 2 or 'auto', got 0"
    assert dry_run_error(capsys, PAPER, "data.train_shards=s3://bucket/{0..7}.tar").startswith(
        f"error: data.train_shards=s3://bucket/{{0..7}}.tar (command line): {REMOTE}")
    # a dotted override given after the flag wins, and is what the error names
    assert dry_run_error(capsys, DEMO, "--lr", "1e-3", "train.lr=-1") == \
        "error: train.lr=-1 (command line): 'train.lr' must be >= 0, got -1.0"
    # a whole stage list set on the command line answers for every stage key in it
    assert dry_run_error(capsys, DEMO, "stages=[{}, {k: 0}]") == \
        "error: stages=[{}, {k: 0}] (command line): 'stages.1.k' must be an int >= 2 or 'auto', got 0"
    assert dry_run_error(capsys, DEMO, "train.lr_scheduler=cosin") == (
        "error: train.lr_scheduler=cosin (command line): 'train.lr_scheduler' must be one of cosine, const, "
        "const-cooldown, got 'cosin'; did you mean 'cosine'?")


def test_checks_after_loading_blame_the_override(tmp_path, shards, capsys):
    cfg = tiny_config(tmp_path, shards, stages=[{}, {"k": 2, "group_size": 4}])
    err = dry_run_error(capsys, cfg, "--world-size", "2", "stages.1.group_size=12")
    assert err.startswith("error: stages.1.group_size=12 (command line): 'stages.1.group_size' (12) must be <= "), err
    err = dry_run_error(capsys, cfg, "--world-size", "3", "train.global_batch_size=16")
    assert err.startswith("error: train.global_batch_size=16 (command line): 'train.global_batch_size' (16) must be "
                          "divisible by world size"), err


def test_a_value_from_the_file_blames_the_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(open(DEMO).read().replace("{k: 16, group_size: 16, init: previous}\n  - {k: 16",
                                              "{k: 16, group_size: 16, init: previous}\n  - {k: 0", 1))
    assert dry_run_error(capsys, str(path)) == f"error: {path}: 'stages.2.k' must be an int >= 2 or 'auto', got 0"
    # another key on the command line does not take the blame for the file's value
    assert dry_run_error(capsys, str(path), "stages.1.k=8") == \
        f"error: {path}: 'stages.2.k' must be an int >= 2 or 'auto', got 0"
    remote = tmp_path / "remote.yaml"
    remote.write_text(open(DEMO).read().replace("synthetic: true", "train_shards: s3://bucket/{0..7}.tar"))
    assert dry_run_error(capsys, str(remote)).startswith(f"error: {remote}: {REMOTE}")


def test_a_combination_names_each_source():
    def refused(config, *overrides) -> str:
        with pytest.raises(ConfigError) as e:
            load_config(config, list(overrides))
        return str(e.value)

    assert refused(DEMO, "train.engine=deepspeed", "train.optimizer=lars").startswith(
        "train.engine=deepspeed, train.optimizer=lars (command line): train.engine=deepspeed runs AdamW only")
    # the paper config's file sets train.precision amp (fp16 AMP), the command line the engine
    assert refused(PAPER, "train.engine=deepspeed").startswith(f"train.engine=deepspeed (command line) and {PAPER}: ")
    assert refused(DEMO, Override("train.precision=amp", "--precision amp"), "train.engine=deepspeed").startswith(
        "--precision amp and train.engine=deepspeed (command line): ")
