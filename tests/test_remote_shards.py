"""Remote shards with stages >= 1 are refused at config load (so by the run and by --dry-run alike)
with one `error:` line, before stage 0 runs or anything is written (real CLI subprocesses)."""
import os

import pytest

from conftest import ROOT, tiny_config
import forked_ranks
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError

REMOTE = "pipe:curl -s -L https://example.com/cc12m/{00000..00007}.tar"
WANT = ("'data.train_shards' 'pipe:curl -s -L https://example.com/cc12m/{00000..00007}.tar' is not a local path, "
        "and stages >= 1 read samples by random access (a tar index). Copy the shards to a local disk, or mount "
        "the bucket (s3fs, gcsfuse, rclone mount) and give the local paths; or train stage 0 only (one entry in stages)")


@pytest.mark.parametrize("url", [REMOTE, "s3://bucket/{0..7}.tar", "https://host/a.tar::/local/b.tar"])
def test_remote_shards_with_later_stages_are_refused_at_load(tmp_path, shards, url):
    cfg = tiny_config(tmp_path, shards, stages=[{}, {"k": 2, "group_size": 4}])
    with pytest.raises(ConfigError, match="is not a local path, and stages >= 1 read samples by random access"):
        load_config(cfg, [f"data.train_shards={url}", "data.num_samples=1000"])
    # stage 0 alone streams, which reads any URL webdataset opens
    one = load_config(cfg, [f"data.train_shards={url}", "data.num_samples=1000", "stages=[{}]"])
    assert len(one.stages) == 1


@pytest.mark.launch
@pytest.mark.parametrize("dry", [True, False])
def test_run_and_dry_run_fail_before_stage_0_with_one_error_line(tmp_path, shards, dry):
    cfg = tiny_config(tmp_path, shards, stages=[{}, {"k": 2, "group_size": 4}])
    run = tmp_path / "run"
    argv = [os.path.join(ROOT, "launch/pretrain.py"), "--config", cfg, "--run-dir", str(run),
            f"data.train_shards={REMOTE}", "data.num_samples=1000"] + (["--dry-run", "--world-size", "8"] if dry else [])
    proc = forked_ranks.python(argv, timeout=120, cwd=str(tmp_path), env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2
    # the shards came from the command line, and the error says so (not the YAML file)
    assert proc.stderr == f"error: data.train_shards={REMOTE} (command line): {WANT}\n"
    assert proc.stdout == "" and not run.exists()
