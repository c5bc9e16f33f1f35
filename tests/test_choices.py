"""Every choice the config names is a registry entry checked when the config loads
(mcl_dist/config/choices.py): one impossible combination per registry, refused with its message,
and `--dry-run` refuses one before planning anything."""
import os
import sys

import pytest

from conftest import ROOT
import forked_ranks
from mcl_dist.config.choices import REGISTRIES
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError
from mcl_dist.eval.metric_registry import METRICS

BASE = ["data.synthetic=true"]


def refused(*overrides):
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + list(overrides))
    return str(e.value)


def test_every_registry_is_checked():
    assert set(REGISTRIES) == {"objective", "train.engine", "train.optimizer", "train.lr_scheduler", "cluster.backend",
                               "cluster.k_rule", "model.integration_weights", "data.dataset_type"}
    assert all(callable(entry.check) for registry in REGISTRIES.values() for entry in registry.values())
    load_config(None, BASE)  # the defaults pass every check


def test_objective_image_only_cannot_embed_text():
    # every value here is a command-line override: the message names them (tests/test_error_source.py)
    assert refused("objective=simclr", "cluster.embed=text") == (
        "cluster.embed=text, objective=simclr (command line): 'cluster.embed' must be image for objective simclr "
        "(there is no text)")
    assert refused("objective=simclr", "simclr.arch=resnet9") == (
        "simclr.arch=resnet9 (command line): 'simclr.arch' must be one of resnet18, resnet34, resnet50, tiny, "
        "got 'resnet9'")
    assert refused("objective=clipp") == \
        "objective=clipp (command line): 'objective' must be one of clip, simclr, got 'clipp'; did you mean 'clip'?"


def test_engine_deepspeed_refuses_lars():
    assert refused("train.engine=deepspeed", "train.optimizer=lars") == (
        "train.engine=deepspeed, train.optimizer=lars (command line): train.engine=deepspeed runs AdamW only "
        "(its ZeRO partitions hold AdamW's moments); got train.optimizer=lars: use train.engine=ddp for it")
    assert refused("train.engine=deepspeed", "train.zero_stage=0", "train.precision=bf16").startswith(
        "train.engine=deepspeed, train.zero_stage=0, train.precision=bf16 (command line): "
        "train.engine=deepspeed with train.zero_stage=0 and bf16 is not supported")
    load_config(None, BASE + ["train.engine=ddp", "train.optimizer=lars"])  # LARS runs under DDP


def test_dataset_type_csv_is_one_local_file():
    assert refused("data.dataset_type=csv", "data.train_shards=a.csv::b.csv") == \
        ("data.train_shards=a.csv::b.csv (command line): 'data.train_shards' 'a.csv::b.csv': a CSV data set "
         "(data.dataset_type csv) is one local file")
    assert refused("data.train_shards=pipe:curl -s http://x/a.csv").endswith(
        "'data.train_shards' 'pipe:curl -s http://x/a.csv': a CSV data set (data.dataset_type csv) is one local file")
    assert refused("data.dataset_type=tar").startswith(
        "data.dataset_type=tar (command line): 'data.dataset_type' must be one of webdataset, csv, auto")


def test_optimizer_adamw_needs_betas_below_one():
    assert refused("train.optimizer=adamw", "train.beta2=1.0") == ("train.beta2=1.0, train.optimizer=adamw (command "
                                                                   "line): 'train.beta2' must be in [0, 1) for "
                                                                   "train.optimizer=adamw, got 1.0")
    assert refused("train.optimizer=lars", "train.beta1=1.5") == ("train.beta1=1.5, train.optimizer=lars (command "
                                                                  "line): 'train.beta1' must be in [0, 1) for "
                                                                  "train.optimizer=lars, got 1.5")


def test_scheduler_const_cooldown_needs_cooldown_steps():
    assert refused("train.lr_scheduler=const-cooldown", "train.lr_cooldown_steps=0") == (
        "train.lr_scheduler=const-cooldown, train.lr_cooldown_steps=0 (command line): "
        "'train.lr_scheduler' const-cooldown needs 'train.lr_cooldown_steps' > 0, got 0")


def test_kmeans_backend_faiss_needs_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError, as without the extra
    assert refused("cluster.backend=faiss").startswith(
        "cluster.backend=faiss (command line): cluster.backend=faiss needs faiss, which is not importable (")
    assert refused("cluster.backend=sklearn") == \
        "cluster.backend=sklearn (command line): 'cluster.backend' must be one of torch, faiss, got 'sklearn'"


def test_eval_metric_needs_a_text_tower():
    assert refused("objective=simclr", "eval.metrics=[linear_probe, zero_shot]") == (
        "eval.metrics=[linear_probe, zero_shot], objective=simclr (command line): 'eval.metrics': zero_shot needs a "
        "text tower, which objective simclr has not")
    assert refused("eval.metrics=[mmvpp]") == (f"eval.metrics=[mmvpp] (command line): 'eval.metrics' lists unknown "
                                                f"metric 'mmvpp'; known: {', '.join(METRICS)}; did you mean 'mmvp'?")
    assert refused("eval.metrics=[clip_benchmark]") == (
        "eval.metrics=[clip_benchmark] (command line): 'eval.metrics': clip_benchmark is not run by the pipeline; "
        "run `mcl-clip-benchmark` on the run's checkpoints instead")
    load_config(None, BASE + ["objective=simclr", "eval.metrics=[linear_probe, knn]"])


def test_dry_run_refuses_an_impossible_combination(tmp_path):
    argv = [os.path.join(ROOT, "launch/pretrain.py"), "--config", os.path.join(ROOT, "configs/demo.yaml"),
            "--dry-run", "train.engine=deepspeed", "train.optimizer=lars"]
    proc = forked_ranks.python(argv, cwd=tmp_path, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: train.engine=deepspeed, train.optimizer=lars (command line): train.engine=deepspeed runs AdamW only "
        "(its ZeRO partitions hold AdamW's moments); got train.optimizer=lars: use train.engine=ddp for it"]
