"""The dry run refuses what the run refuses, with the same one `error:` line: each bad case goes
through launch/pretrain.py twice, as a run (under a real torchrun with gloo where it needs ranks)
and as `--dry-run --world-size N`, and the two must agree."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config, torchrun
from mcl_dist.config_load import load_config
from mcl_dist.data.preflight import DataError, check_shard_count
from mcl_dist.dry_run import build_plan

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
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)


@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_and_run_refuse_the_same_bad_cases_with_the_same_line(tmp_path, shards, case):
    world, over = CASES[case]
    cfg = tiny_config(tmp_path, shards)
    planned = launch(cfg, world, over(shards))
    ran = launch(cfg, world, over(shards), run_dir=tmp_path / "run")
    # torchrun exits 1 when a rank fails; the rank's own exit code 2 is in its summary
    assert planned.returncode == 2 and ran.returncode == (2 if world == 1 else 1), (planned.stderr, ran.stderr[-3000:])
    assert world == 1 or re.search(r"exitcode\s*:\s*2\b", ran.stderr), ran.stderr[-3000:]
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
