"""Stage-0 training under a real torchrun (2 gloo ranks, tiny ViT, real shards)."""
import json
import os

import open_clip
import torch

import pytest

from conftest import ROOT, tiny_config, torchrun, write_test_shards
import forked_ranks


def metrics(run_dir, stage=0):
    with open(os.path.join(run_dir, f"stage_{stage}", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run(cfg, run_dir, *overrides, check=True):
    return torchrun(["launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir), *overrides], check=check)


@pytest.mark.launch
def test_two_rank_training_lowers_loss_and_checkpoint_loads_in_open_clip(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards)
    run(cfg, tmp_path / "run", "train.max_steps=16", "train.lr=2e-3", "train.log_every=1")
    rows = metrics(tmp_path / "run")
    losses = [r["loss"] for r in rows]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert all(r["samples_per_s"] > 0 and r["bad_samples"] == 0 for r in rows)
    assert all(r["grad_norm"] is None for r in rows)  # no clipping: not measured, JSON null (not NaN)
    assert os.path.exists(tmp_path / "run" / "config.yaml")
    # the stage checkpoint loads through open_clip's own factory
    open_clip.add_model_config(os.path.join(ROOT, "configs/models/tiny-vit.json"))
    path = str(tmp_path / "run" / "stage_0" / "checkpoint.pt")
    model, _, _ = open_clip.create_model_and_transforms("tiny-vit", pretrained=path)
    ours = torch.load(path, weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ours[k]), k


@pytest.mark.launch
def test_killed_run_resumes_to_the_same_weights(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards)
    common = ["train.max_steps=6", "train.checkpoint_every=3", "data.workers=2"]
    run(cfg, tmp_path / "full", *common)
    # what a SLURM requeue hit: killed while writing the first checkpoint, the stage restarts at step 0
    # and the records the dead launch logged are dropped, not kept in front of the new ones
    killed = run(cfg, tmp_path / "resumed", *common, "debug.kill_at=write:step_00000003.pt", check=False)
    assert killed.returncode != 0 and [r["step"] for r in metrics(tmp_path / "resumed")] == [1, 2]
    killed = run(cfg, tmp_path / "resumed", *common, "debug.kill_at=stage_0/train:3", check=False)
    assert killed.returncode != 0 and "resuming stage 0" not in killed.stderr
    assert [r["step"] for r in metrics(tmp_path / "resumed")] == [1, 2]
    ckpts = os.listdir(tmp_path / "resumed" / "stage_0" / "checkpoints")
    assert ckpts == ["step_00000003.pt"], ckpts
    assert not os.path.exists(tmp_path / "resumed" / "stage_0" / "checkpoint.pt")
    out = run(cfg, tmp_path / "resumed", *common)
    assert "resuming stage 0" in out.stderr
    a = torch.load(tmp_path / "full" / "stage_0" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "stage_0" / "checkpoint.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in metrics(tmp_path / "resumed")] == [r["step"] for r in metrics(tmp_path / "full")]


@pytest.mark.launch
def test_too_many_bad_samples_stop_with_the_shard_named(tmp_path):
    bad = tuple(range(32, 64))  # every sample of the second shard is corrupt
    urls = write_test_shards(str(tmp_path / "d"), n_shards=4, per_shard=32, corrupt=bad)
    cfg = tiny_config(tmp_path, urls)
    out = run(cfg, tmp_path / "run", "data.max_bad_fraction=0.1", "train.max_steps=12", check=False)
    assert out.returncode != 0
    assert "samples were unreadable" in out.stderr and "s00001.tar" in out.stderr, out.stderr[-3000:]


@pytest.mark.launch
def test_config_error_is_one_line_and_writes_nothing(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards)
    # plain python (world size 1): one line, exit code 2, no traceback at all
    out = forked_ranks.python(["launch/pretrain.py", "--config", cfg, "--run-dir", str(tmp_path / "run"), "train.lrr=1"])
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: command-line override 'train.lrr': unknown key 'train.lrr'; "
                                  "did you mean 'train.lr'?")
    assert not os.path.exists(tmp_path / "run")
    # under torchrun the launcher adds its own summary, but no traceback comes from our code
    out = run(cfg, tmp_path / "run", "train.lrr=1", check=False)
    assert out.returncode != 0 and "did you mean 'train.lr'?" in out.stderr
    assert 'mcl_dist/' not in out.stderr
    out = run(cfg, tmp_path / "run", "train.global_batch_size=15", check=False)
    assert "must be divisible by world size" in out.stderr and not os.path.exists(tmp_path / "run")


@pytest.mark.launch
def test_non_finite_loss_stops_with_a_message(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards)
    out = run(cfg, tmp_path / "run", "train.lr=1e12", "train.warmup_steps=1", "train.max_steps=8", check=False)
    assert out.returncode != 0
    assert "non-finite loss at step" in out.stderr, out.stderr[-3000:]


def test_local_checkpoint_taken_as_stage_0_without_training(tmp_path, shards):
    """stages.0.pretrained: a local open_clip checkpoint becomes stage 0 as is (world size 1)."""
    open_clip.add_model_config(os.path.join(ROOT, "configs/models/tiny-vit.json"))
    torch.manual_seed(123)
    model = open_clip.create_model("tiny-vit")
    ckpt = tmp_path / "given.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    cfg = tiny_config(tmp_path, shards)
    out = forked_ranks.python(["launch/pretrain.py", "--config", cfg, "--run-dir", str(tmp_path / "run"),
                               f"stages.0.pretrained={ckpt}"], env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "using pretrained weights" in out.stderr
    assert not os.path.exists(tmp_path / "run" / "stage_0" / "metrics.jsonl")  # nothing was trained
    saved = torch.load(tmp_path / "run" / "stage_0" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())

