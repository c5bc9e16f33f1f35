"""mcl_dist/bench/warm_launch.py: runs forked from a warm process behave as fresh ones (output,
exit status, working directory) and can be killed."""
import os
import time

import pytest

from conftest import ROOT
from mcl_dist.bench.warm_launch import WarmLauncher

DEMO = os.path.join(ROOT, "configs", "demo.yaml")


def wait(run, timeout=120):
    end = time.monotonic() + timeout
    while run.poll() is None:
        assert time.monotonic() < end, "the warm run did not end"
        time.sleep(0.05)
    return run.returncode


@pytest.mark.launch
def test_a_warm_run_is_the_entry_point_with_its_own_log_exit_status_and_directory(tmp_path):
    launcher = WarmLauncher()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    ok = launcher.start(["--config", DEMO, "--dry-run", "--world-size", "2"], ROOT, env, str(tmp_path / "ok.log"))
    assert wait(ok) == 0
    text = (tmp_path / "ok.log").read_text()
    assert "world size 2: global batch 128 = 2 ranks x micro-batch 64" in text and "runs/demo/report.md" in text
    # the same command from another directory: the demo's relative model file is not found there
    elsewhere = launcher.start(["--config", DEMO, "--dry-run"], str(tmp_path), env, str(tmp_path / "cwd.log"))
    assert wait(elsewhere) == 2
    assert (tmp_path / "cwd.log").read_text() == "error: 'model.config_file': configs/models/tiny-vit.json not found\n"
    bad = launcher.start(["--config", DEMO, "--dry-run", "train.lrr=1"], ROOT, env, str(tmp_path / "bad.log"))
    assert wait(bad) == 2  # the entry point's own exit status and one line for a config error
    assert (tmp_path / "bad.log").read_text() == ("error: command-line override 'train.lrr': unknown key 'train.lrr'; "
                                                  "did you mean 'train.lr'?\n")


@pytest.mark.launch
def test_a_warm_run_can_be_killed(tmp_path):
    run = WarmLauncher().start(["--config", DEMO, "--run-dir", str(tmp_path / "run"), f"data.synthetic_dir={tmp_path / 'd'}"],
                               str(tmp_path), dict(os.environ, CUDA_VISIBLE_DEVICES=""), str(tmp_path / "log"))
    time.sleep(1)
    run.kill()
    assert run.wait(60) == -9
