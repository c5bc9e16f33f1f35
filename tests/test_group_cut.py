"""What a later stage's group cutting drops: measured by the sampler's own plan in the run (logged,
refused over train.max_dropped_share) and estimated by the dry run; the paper config keeps >= 98%."""
import logging
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT, write_test_shards
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError
from mcl_dist.data import group_cut
from mcl_dist.pipeline.dry_run import build_plan, format_plan
from mcl_dist.steps.train_step import planned_source

PAPER = os.path.join(ROOT, "configs/cc12m_vit_l14_paper.yaml")
CC12M = 10_503_350  # samples in the 1,243 img2dataset shards of CC12M as downloaded


def stage_ctx(cfg, world):
    return SimpleNamespace(cfg=cfg, info=SimpleNamespace(world_size=world, rank=0, is_main=True))


def skewed_labels(n=64_000, seed=0):
    """Label sizes like stage 3's: many labels far smaller than a global batch, a few large."""
    sizes = np.random.default_rng(seed).multinomial(n, np.random.default_rng(seed).dirichlet(np.ones(200)))
    return np.repeat(np.arange(sizes.size), sizes)


def test_the_run_logs_the_drop_and_refuses_a_stage_over_the_limit(caplog):
    cfg = load_config(PAPER, ["train.global_batch_size=800", "stages.3.group_size=800"])  # one label per step
    labels = skewed_labels()
    with pytest.raises(ConfigError) as e:
        planned_source(stage_ctx(cfg, 8), 3, None, labels, None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("stage 3: the group cutting would drop")
    assert "train.max_dropped_share (0.05)" in msg and "set stages.3.group_size <= 100" in msg
    share = float(re.search(r"drop ([\d.]+)% of the stage's samples", msg).group(1)) / 100
    # the fix it names clears the check, and the log says what the stage drops
    cfg = load_config(PAPER, ["train.global_batch_size=800", "stages.3.group_size=100"])
    caplog.clear()  # the refused call above logged its own drop (77.5%) where INFO was already on
    with caplog.at_level(logging.INFO, logger="mcl_dist"):
        _, _, plan = planned_source(stage_ctx(cfg, 8), 3, None, labels, None)
    line = next(r.getMessage() for r in caplog.records if "group cutting drops" in r.getMessage())
    assert re.match(r"stage 3: group cutting drops 0\.0% of samples \(\d of 64,000\) and [\d.]+% of labels", line), line
    assert share > 0.05 and plan.mode == "local"
    # so does the other fix: a limit the stage stays under
    cfg = load_config(PAPER, ["train.global_batch_size=800", "stages.3.group_size=800",
                              f"train.max_dropped_share={share + 0.01}"])
    planned_source(stage_ctx(cfg, 8), 3, None, labels, None)


def test_drop_shares_count_dropped_samples_and_labels_that_never_train():
    from mcl_dist.data.sampler import plan_epoch

    labels = np.repeat(np.arange(4), [25, 12, 9, 1])  # group 10 x 2 ranks = 20: only label 0 trains, once
    plan = plan_epoch(labels, epoch=0, seed=0, world_size=2, micro_batch=10, group_size=20)
    d = group_cut.drop_shares(plan)
    assert (d["samples"], d["sample_drop"], d["labels"], d["label_drop"]) == (47, 27, 4, 3)
    assert d["mode"] == "global" and d["steps"] == 1


def test_max_dropped_share_is_checked():
    with pytest.raises(ConfigError, match=r"'train.max_dropped_share' must be in \[0, 1\], got 1.5"):
        load_config(PAPER, ["train.max_dropped_share=1.5"])


@pytest.mark.launch
def test_paper_config_dry_run_keeps_98_percent_of_every_stage_at_8_ranks(tmp_path):
    shards = write_test_shards(str(tmp_path), n_shards=8, per_shard=2)
    cfg = load_config(PAPER, [f"data.train_shards={'::'.join(shards)}", f"data.num_samples={CC12M}"])
    plan = build_plan(cfg, PAPER, "runs/x", 8)
    out = format_plan(plan)
    assert "group cutting per stage (estimate: each label splits into the next stage's K clusters" in out
    shares = re.findall(r"^  stage (\d): group cutting drops ([\d.]+)% of samples", out, re.M)
    assert [s for s, _ in shares] == ["1", "2", "3"]
    assert all(float(p) <= 2.0 for _, p in shares), shares
    assert not any("group cutting" in w for w in plan["warnings"])
    # the public layout (one label per global batch of 8,000) is what the estimate warns about
    cfg.stages[3].group_size = 8000
    warned = [w for w in build_plan(cfg, PAPER, "runs/x", 8)["warnings"] if "group cutting" in w]
    assert len(warned) == 1 and warned[0].startswith("stage 3: the group cutting would drop")
    assert "set stages.3.group_size <= 1000" in warned[0]
