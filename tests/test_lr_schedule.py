"""train.lr_scheduler: cosine | const | const-cooldown, as open_clip_train names them."""
import json
import math
import os

import pytest

from conftest import cosine_lr, tiny_config, torchrun
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError
from mcl_dist.training.lr_schedule import lr_at


def test_warmup_is_linear_for_every_kind():
    for kind in ("cosine", "const", "const-cooldown"):
        assert [lr_at(s, 100, 4, kind, 2.0, cooldown_steps=10) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]


def test_const_stays_flat_after_warmup():
    lrs = [lr_at(s, 50, 5, "const", 1e-3) for s in range(5, 50)]
    assert lrs == [1e-3] * 45


def test_const_cooldown_decays_over_the_last_steps_only():
    total, cool = 40, 10
    lrs = [lr_at(s, total, 5, "const-cooldown", 1.0, cooldown_steps=cool, cooldown_end=0.1) for s in range(total)]
    assert lrs[5:30] == [1.0] * 25  # flat until the cool-down starts
    tail = lrs[30:]
    assert tail[0] == 1.0 and all(a > b for a, b in zip(tail, tail[1:]))  # strictly decreasing
    assert tail[-1] == pytest.approx(0.1 + 0.9 * (1 - 9 / 10))  # linear towards cooldown_end
    # power 2 cools faster at first, as open_clip_train's --lr-cooldown-power
    sq = lr_at(35, total, 5, "const-cooldown", 1.0, cooldown_steps=cool, cooldown_power=2.0)
    assert sq == pytest.approx((1 - 0.5) ** 2) and sq < lr_at(35, total, 5, "const-cooldown", 1.0, cooldown_steps=cool)


def test_cosine_is_open_clip_trains_schedule():
    for s in range(60):
        assert lr_at(s, 60, 6, "cosine", 5e-4) == pytest.approx(cosine_lr(s, 5e-4, 6, 60), rel=1e-12)  # exact: below
    assert lr_at(59, 60, 6, "cosine", 1.0) < 0.01 and math.isclose(lr_at(6, 60, 6, "cosine", 1.0), 1.0)


def test_config_checks_scheduler_and_cooldown(tmp_path):
    cfg = load_config(None, ["data.synthetic=true", "train.lr_scheduler=const"])
    assert cfg.train.lr_scheduler == "const"
    with pytest.raises(ConfigError, match=r"'train.lr_scheduler' must be one of .*did you mean 'const'"):
        load_config(None, ["data.synthetic=true", "train.lr_scheduler=constant"])
    with pytest.raises(ConfigError, match=r"const-cooldown needs 'train.lr_cooldown_steps' > 0"):
        load_config(None, ["data.synthetic=true", "train.lr_scheduler=const-cooldown"])


@pytest.mark.launch
def test_training_logs_the_const_cooldown_schedule(tmp_path, shards):
    """A real (one-process) stage-0 run: the logged lr is flat after warm-up, then cools down."""
    cfg = tiny_config(tmp_path, shards)
    run_dir = tmp_path / "run"
    torchrun(["launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir), "train.max_steps=8",
              "train.warmup_steps=2", "train.lr=1e-3", "train.log_every=1", "train.checkpoint_every=8",
              "train.lr_scheduler=const-cooldown", "train.lr_cooldown_steps=3", "train.grad_clip_norm=1.0"], nproc=1)
    with open(os.path.join(run_dir, "stage_0", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    lrs = [r["lr"] for r in rows]
    assert all(r["grad_norm"] > 0 for r in rows)  # clipping measures the norm, and it is logged
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])


def test_values_are_open_clip_trains_own_schedulers_on_a_real_optimizer():
    import torch
    from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr as oc_cosine

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.0)
    total, warm = 50, 5
    refs = {"cosine": oc_cosine(opt, 3e-4, warm, total), "const": const_lr(opt, 3e-4, warm, total),
            "const-cooldown": const_lr_cooldown(opt, 3e-4, warm, total, 10, 2.0, 1e-5)}
    for kind, ref in refs.items():
        for s in range(total):
            want = ref(s)
            assert opt.param_groups[0]["lr"] == want  # open_clip_train sets the optimizer's lr ...
            assert lr_at(s, total, warm, kind, 3e-4, cooldown_steps=10, cooldown_power=2.0, cooldown_end=1e-5) == want
