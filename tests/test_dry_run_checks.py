"""The dry run refuses what the run refuses, with the same one `error:` line: each bad case goes
through launch/pretrain.py twice, as a run (under a real torchrun with gloo where it needs ranks)
and as `--dry-run --world-size N`, and the two must agree."""
import json
import os
import re
import subprocess

import pytest

from conftest import ROOT, rank_exit_codes, tiny_config, torchrun
import forked_ranks
from mcl_dist.config.load import check_world, load_config
from mcl_dist.config.schema import ConfigError
from mcl_dist.data.preflight import DataError, check_shard_count
from mcl_dist.pipeline.dry_run import build_plan

ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
REMOTE = "pipe:curl -s https://example.com/cc12m/{0..3}.tar"
# name: (ranks, overrides given the test shards)
CASES = {
    "one shard for two ranks": (2, lambda sh: [f"data.train_shards={sh[0]}"]),
    "global batch not divisible by the ranks": (2, lambda sh: ["train.global_batch_size=15"]),
    "group larger than the micro-batch, not the global one": (1, lambda sh: ["stages=[{}, {k: 2, group_size: 24}]"]),
    "remote shards for stage 1": (1, lambda sh: [f"data.train_shards={REMOTE}", "data.num_samples=1000",
                                                 "stages=[{}, {k: 2, group_size: 4}]"]),
}


def error_lines(text: str) -> set:
    return {line for line in text.splitlines() if line.startswith("error:")}


def launch(cfg: str, world: int, over: list[str], run_dir=None) -> subprocess.CompletedProcess:
    args = ["launch/pretrain.py", "--config", cfg, *over]
    if run_dir is None:  # the dry run
        args += ["--dry-run", "--world-size", str(world)]
    else:
        args += ["--run-dir", str(run_dir)]
    if run_dir is not None and world > 1:
        return torchrun(args, nproc=world, check=False)
    return forked_ranks.python(args, cwd=ROOT, timeout=300, env=ENV)


@pytest.mark.launch
@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_and_run_refuse_the_same_bad_cases_with_the_same_line(tmp_path, shards, case):
    world, over = CASES[case]
    cfg = tiny_config(tmp_path, shards)
    planned = launch(cfg, world, over(shards))
    ran = launch(cfg, world, over(shards), run_dir=tmp_path / "run")
    # torchrun exits 1 when a rank fails; the rank's own exit code 2 is in its summary
    assert planned.returncode == 2 and ran.returncode == (2 if world == 1 else 1), (planned.stderr, ran.stderr[-3000:])
    assert world == 1 or 2 in rank_exit_codes(ran), ran.stderr[-3000:]
    assert len(error_lines(planned.stderr)) == 1
    assert error_lines(planned.stderr) == error_lines(ran.stderr), ran.stderr[-3000:]
    assert "paths written" not in planned.stdout  # refused before any plan is printed


def test_sixteen_ranks_on_eight_shards_is_the_runs_shard_check(tmp_path):
    """16 ranks cannot run here; the dry run raises what the run's preflight raises for them."""
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.tar"))
        open(paths[-1], "wb").close()
    path = os.path.join(ROOT, "configs/cc12m_vit_b32.yaml")
    cfg = load_config(path, [f"data.train_shards={'::'.join(paths)}", "data.num_samples=1000000",
                             "model.pretrained=", "stages.0.pretrained="])
    with pytest.raises(DataError) as planned:
        build_plan(cfg, path, "runs/x", world=16)
    with pytest.raises(DataError) as ran:
        check_shard_count(8, 16, stage0_trains=True)  # what Pipeline.preflight calls
    assert str(planned.value) == str(ran.value)
    assert str(planned.value).startswith("data.train_shards: 8 shards for 16 ranks")
    assert build_plan(cfg, path, "runs/x", world=8)["world"] == 8  # 8 ranks on 8 shards pass


# -- the memory warning's advice: every setting it names is applied here and must clear it ------
PAPER = os.path.join(ROOT, "configs/cc12m_vit_l14_paper.yaml")
SETTINGS = re.compile(r"these fit \(each checked\): (.*)$")


def _empty_shards(tmp_path, n: int) -> str:
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"{i:05d}.tar"))
        open(paths[-1], "wb").close()
    return "::".join(paths)


def _advised(warnings: list[str]) -> list[str]:
    """The settings the last warning names, e.g. ['model.grad_checkpointing=true', '16 ranks']."""
    m = SETTINGS.search(warnings[-1])
    assert m, warnings[-1]
    return [item.split(" (~")[0] for item in m.group(1).split("; ")]


def _check_advice(path: str, over: list[str], world: int, gpu: str) -> list[str]:
    plan = build_plan(load_config(path, over), path, "runs/x", world=world, gpu=gpu)
    assert plan["warnings"], plan["memory"]
    advised = _advised(plan["warnings"])
    assert advised
    for setting in advised:
        if setting.endswith(" ranks"):
            again = build_plan(load_config(path, over), path, "runs/x", world=int(setting.split()[0]), gpu=gpu)
        else:
            again = build_plan(load_config(path, over + [setting]), path, "runs/x", world=world, gpu=gpu)
        assert again["warnings"] == [], (setting, again["memory"])
    return advised


@pytest.mark.launch
def test_memory_advice_for_the_paper_recipe_on_a_40_gb_gpu_works(tmp_path):
    """ViT-L-14 with QuickGELU at 1,000 per GPU does not fit an A100 40GB. accum_freq 2 or 4 would be
    refused by the group-size check (groups of 1,000 neither fit a rank's micro-batch nor equal the
    global one), so they must not be advised; 8 passes (one group of 1,000 gathered over the 8 ranks
    each micro-step). What is advised clears the warning."""
    over = [f"data.train_shards={_empty_shards(tmp_path, 64)}", "data.num_samples=10000000",
            "stages=[{pretrained: openai}, {k: 10, group_size: 1000, init: base}]"]
    advised = _check_advice(PAPER, over, 8, "a100-40gb")
    assert "model.grad_checkpointing=true" in advised
    for accum in (2, 4):
        with pytest.raises(ConfigError, match="must be <= the per-rank micro-batch"):
            check_world(load_config(PAPER, over + [f"train.accum_freq={accum}"]), 8)
    assert [s for s in advised if s.startswith("train.accum_freq")] == ["train.accum_freq=8"]
    check_world(load_config(PAPER, over + ["train.accum_freq=8"]), 8)
    # the paper's own 8 x 80 GB fits, and checkpointing lowers the estimate
    plan80 = build_plan(load_config(PAPER, over), PAPER, "runs/x", world=8, gpu="a100-80gb")
    assert plan80["warnings"] == []
    ckpt = build_plan(load_config(PAPER, over + ["model.grad_checkpointing=true"]), PAPER, "runs/x", world=8)
    assert _gib(ckpt) < _gib(plan80) / 3


def test_memory_advice_with_accumulation_when_groups_allow_it(tmp_path):
    """Stage 0 alone (no groups): a larger accum_freq passes the checks, is advised and clears it."""
    over = [f"data.train_shards={_empty_shards(tmp_path, 8)}", "data.num_samples=1000000", "model.pretrained=",
            "stages=[{}]", "model.lock_text=false", "model.lock_image=false", "train.global_batch_size=1000"]
    advised = _check_advice(PAPER, over, 1, "a100-80gb")
    assert any(s.startswith("train.accum_freq=") for s in advised)


def test_quick_gelu_has_its_own_activation_rows(tmp_path):
    over = [f"data.train_shards={_empty_shards(tmp_path, 8)}", "data.num_samples=1000000"]
    quick = _gib(build_plan(load_config(PAPER, over), PAPER, "runs/x", world=8))
    gelu = _gib(build_plan(load_config(PAPER, over + ["model.force_quick_gelu=false"]), PAPER, "runs/x", world=8))
    assert quick > 1.15 * gelu


def _gib(plan) -> float:
    """The largest stage's estimate from the plan's memory lines."""
    return max(float(line.rsplit("= ", 1)[1].split()[0]) for line in plan["memory"] if " = " in line)


def test_the_shipped_activation_table_is_the_measured_json():
    """memory_estimate's table is what tools/measure_activations.py wrote; a model trained with
    QuickGELU but without a measured row says which row is missing instead of using GELU's."""
    from mcl_dist.training.memory_estimate import ACTIVATIONS, row_name, table_entry
    with open(os.path.join(ROOT, "docs/bench/activations.json")) as f:
        assert json.load(f)["models"] == ACTIVATIONS
    assert row_name("RN50", quick_gelu=True) == "RN50-quickgelu" == row_name("RN50-quickgelu")
    assert table_entry("ViT-H-14", quick_gelu=True) is None
    assert table_entry("ViT-L-14", quick_gelu=True, checkpointed=True) == {
        "image": ACTIVATIONS["ViT-L-14-quickgelu"]["image_checkpointed"],
        "text": ACTIVATIONS["ViT-L-14-quickgelu"]["text_checkpointed"]}
