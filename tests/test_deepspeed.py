"""DeepSpeed engine (ZeRO 1/2/3 on CPU with gloo) against the DDP engine, under real torchrun.

The file is also its own torchrun worker (`python -m torch.distributed.run tests/test_deepspeed.py
OUT_DIR JOBS_JSON`): each job trains the tiny ViT for a few steps on fixed tensors with a
per-sample loss (so one rank with the whole batch computes the same gradient as 2 ranks with half
each) and writes the consolidated checkpoint the trainer would write.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest
import torch

from conftest import ROOT, tiny_config, torchrun  # run as a torchrun script too: its folder is on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="deepspeed is not importable; install it with "
    "`DS_BUILD_OPS=0 .venv/bin/pip install --no-build-isolation deepspeed==0.19.8` (or pip install -e .[deepspeed])")
TINY = os.path.join(ROOT, "configs/models/tiny-vit.json")


# -- the torchrun worker ---------------------------------------------------------------------
def _batch(step: int, micro: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(1, 49408, (n, 32), generator=g)


def train_job(job: dict, out_dir: str) -> None:
    """One engine run: fresh tiny model (seed 0), optional checkpoint load, `steps` steps, save."""
    from mcl_dist.config.schema import ModelConfig, TrainConfig
    from mcl_dist.core import distributed as dist_utils
    from mcl_dist.model.open_clip_models import create, stage_checkpoint
    from mcl_dist.training.engine import build_engine

    info = dist_utils.info()
    accum, global_batch = 2, 16
    torch.manual_seed(0)
    bundle = create(ModelConfig(config_file=TINY), info.device, pretrained="")
    model = bundle["model"]
    tcfg = TrainConfig(global_batch_size=global_batch, accum_freq=accum, lr=2e-3, wd=0.1, warmup_steps=1,
                       grad_clip_norm=1.0, logit_scale_max=12.0, engine=job["engine"], zero_stage=job.get("zero", 0),
                       precision=job.get("precision", "fp32"))
    if job.get("ds_json"):
        tcfg.deepspeed_config = os.path.join(out_dir, job["name"] + ".json")
        with open(tcfg.deepspeed_config, "w") as f:
            json.dump(job["ds_json"], f)
    engine = build_engine(model, tcfg, info.device, total_steps=20, base_lr=tcfg.lr)
    if job.get("load"):
        state = torch.load(os.path.join(out_dir, job["load"] + ".pt"), weights_only=True)
        model.load_state_dict(state["state_dict"])  # what StageTrainer._resume does
        engine.load_state_dict(state)
    per_micro = global_batch // accum
    share = per_micro // info.world_size
    norms = []
    for step in range(engine.step_count, engine.step_count + job["steps"]):
        for micro in range(accum):
            images, texts = _batch(step, micro, per_micro)
            sl = slice(info.rank * share, (info.rank + 1) * share)
            with engine.accumulating(last=micro == accum - 1):
                out = engine.forward(image=images[sl], text=texts[sl])
                sim = (out["image_features"].float() * out["text_features"].float()).sum(-1)
                loss = (out["logit_scale"].float() * (1 - sim)).mean()
                engine.backward(loss / accum)
        norms.append(engine.step())
    state = engine.state_dict()
    if info.is_main:
        torch.save(stage_checkpoint(model, bundle["name"], bundle["config"], norms=norms, **state),
                   os.path.join(out_dir, job["name"] + ".pt"))
    dist_utils.barrier()


def worker(argv: list[str]) -> None:
    """`test_deepspeed.py OUT_DIR JOBS_JSON`: run the jobs one after another in one process group."""
    from mcl_dist.core import distributed as dist_utils

    out_dir, jobs = argv[0], json.loads(argv[1])
    dist_utils.init_distributed()
    for job in jobs:
        train_job(job, out_dir)
    dist_utils.destroy()


def launch(tmp_path, jobs: list[dict], nproc: int = 2) -> list[dict]:
    torchrun([os.path.join(HERE, "test_deepspeed.py"), str(tmp_path), json.dumps(jobs)], nproc=nproc, timeout=240)
    return [torch.load(tmp_path / (j["name"] + ".pt"), weights_only=True) for j in jobs]


def assert_states_close(a: dict, b: dict, atol: float = 2e-5, rtol: float = 1e-4) -> None:
    """Same step, weights (shape, dtype, value), AdamW moments and parameter groups."""
    assert a["scheduler"] == b["scheduler"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        w = b["state_dict"][k]
        assert v.shape == w.shape and v.dtype == w.dtype, (k, v.shape, w.shape, v.dtype, w.dtype)
        torch.testing.assert_close(v, w, atol=atol, rtol=rtol, msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        assert float(sa[i]["step"]) == float(sb[i]["step"])
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[i][k], sb[i][k], atol=atol, rtol=rtol, msg=f"{i}/{k}")
    ga, gb = a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]
    assert [g["params"] for g in ga] == [g["params"] for g in gb]
    assert [g["weight_decay"] for g in ga] == [g["weight_decay"] for g in gb]


# -- engine-level tests ----------------------------------------------------------------------
@pytest.mark.launch
@needs_deepspeed
def test_zero_states_match_ddp_and_resume_across_engines_and_world_sizes(tmp_path):
    # 3 steps of 2 accumulated micro-batches with clipping and weight-decay groups; then one more
    # step from a checkpoint: DDP from its own, ZeRO-3 and ZeRO-2 with optimizer offload from DDP's
    # (engine switch), and below ZeRO-1 on ONE rank from the 2-rank ZeRO-2 checkpoint (world size
    # and ZeRO stage switch)
    ddp, zero2, ddp4, z3, z2off = launch(tmp_path, [
        {"name": "ddp", "engine": "ddp", "steps": 3},
        {"name": "zero2", "engine": "deepspeed", "zero": 2, "steps": 3},
        {"name": "ddp4", "engine": "ddp", "steps": 1, "load": "ddp"},
        {"name": "z3", "engine": "deepspeed", "zero": 3, "steps": 1, "load": "ddp"},
        {"name": "z2off", "engine": "deepspeed", "zero": 2, "steps": 1, "load": "ddp",
         "ds_json": {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}}])
    (z1,) = launch(tmp_path, [{"name": "z1", "engine": "deepspeed", "zero": 1, "steps": 1, "load": "zero2"}], nproc=1)
    assert_states_close(ddp, zero2)
    torch.testing.assert_close(torch.tensor(ddp["norms"]), torch.tensor(zero2["norms"]), rtol=1e-4, atol=1e-5)
    assert zero2["engine"] == {"name": "deepspeed", "zero_stage": 2}
    assert zero2["state_dict"]["logit_scale"].shape == torch.Size([])  # open_clip's layout, not DeepSpeed's
    # log(1/0.07) = 2.66 at init, Adam moves it by ~lr per step: only the clamp to log(12) = 2.48 gets it
    # there, in both engines (DeepSpeed's fp32 master included, or the next step would undo it)
    assert float(zero2["state_dict"]["logit_scale"]) <= math.log(12.0) + 1e-6
    assert ddp4["scheduler"] == {"step": 4}
    assert_states_close(ddp4, z1)
    assert_states_close(ddp4, z3)
    assert_states_close(ddp4, z2off)  # optimizer offload from a raw DeepSpeed JSON (train.deepspeed_config)


# -- the whole trainer -----------------------------------------------------------------------
def _metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "stage_0", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _run(cfg, run_dir, *overrides, check=True):
    return torchrun(["launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir), *overrides], check=check)


@pytest.mark.launch
@needs_deepspeed
def test_zero2_trainer_kill_resume_matches_ddp_loss_trajectory(tmp_path, shards):
    import open_clip

    cfg = tiny_config(tmp_path, shards)
    common = ["train.max_steps=6", "train.checkpoint_every=3", "train.log_every=1", "train.accum_freq=2",
              "train.grad_clip_norm=1.0", "train.lr=2e-3"]
    _run(cfg, tmp_path / "ddp", *common)
    ds = ["train.engine=deepspeed", "train.zero_stage=2"]
    killed = _run(cfg, tmp_path / "ds", *common, *ds, "debug.kill_at=stage_0/train:3", check=False)
    assert killed.returncode != 0
    assert os.listdir(tmp_path / "ds" / "stage_0" / "checkpoints") == ["step_00000003.pt"]
    out = _run(cfg, tmp_path / "ds", *common, *ds)
    assert "resuming stage 0" in out.stderr
    a, b = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "ds")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    la, lb = [r["loss"] for r in a], [r["loss"] for r in b]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-3, (la, lb)
    assert [r["lr"] for r in a] == pytest.approx([r["lr"] for r in b])
    # the stage checkpoint is a plain fp32 open_clip checkpoint with (nearly) DDP's weights
    path = str(tmp_path / "ds" / "stage_0" / "checkpoint.pt")
    open_clip.add_model_config(TINY)
    model, _, _ = open_clip.create_model_and_transforms("tiny-vit", pretrained=path)
    ours = torch.load(path, weights_only=True)["state_dict"]
    ref = torch.load(tmp_path / "ddp" / "stage_0" / "checkpoint.pt", weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ours[k]), k
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape, k
        torch.testing.assert_close(ours[k], ref[k], atol=5e-4, rtol=1e-3, msg=k)


# -- fast checks without torchrun ------------------------------------------------------------
def test_missing_deepspeed_says_how_to_install(monkeypatch):
    from mcl_dist.config.schema import ConfigError
    from mcl_dist.training.deepspeed_config import import_deepspeed

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now raises ImportError
    with pytest.raises(ConfigError) as e:
        import_deepspeed(torch.device("cpu"))
    msg = str(e.value)
    assert "train.engine=deepspeed" in msg and "pip install -e .[deepspeed]" in msg
    assert "DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed==0.19.8" in msg


def test_deepspeed_config_comes_from_ours_and_raw_json_overrides(tmp_path):
    from mcl_dist.config.schema import ConfigError, TrainConfig
    from mcl_dist.training.deepspeed_config import build_ds_config

    t = TrainConfig(global_batch_size=64, accum_freq=2, grad_clip_norm=1.5, zero_stage=3)
    cfg = build_ds_config(t, world_size=4, device=torch.device("cpu"))
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (64, 8, 2)
    assert cfg["gradient_clipping"] == 1.5 and cfg["zero_optimization"] == {"stage": 3}
    assert cfg["bf16"] == {"enabled": False}  # fp32 on CPU
    assert build_ds_config(t, 4, torch.device("cuda", 0))["bf16"] == {"enabled": True}  # bf16 on GPU (auto)
    raw = tmp_path / "ds.json"
    raw.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}},
                               "train_batch_size": "auto", "gradient_clipping": 0.5}))
    t.deepspeed_config = str(raw)
    cfg = build_ds_config(t, 4, torch.device("cpu"))
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert cfg["gradient_clipping"] == 0.5 and cfg["train_batch_size"] == 64
    raw.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu"):
        build_ds_config(t, 4, torch.device("cpu"))
    raw.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="'optimizer' section"):
        build_ds_config(t, 4, torch.device("cpu"))


if __name__ == "__main__":
    worker(sys.argv[1:])
