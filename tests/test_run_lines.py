"""What a launch prints and leaves in its run directory: the end-of-run line names the report where
it is (a relative run directory, first run and re-run), a launch the manifest refuses writes nothing
(config.yaml keeps the settings the results were trained with), eval/results.json names the models
relative to the run directory, and debug.kill_at=stage_0/train:N stops right after step N.

One finished run of the small two-stage pipeline (launch_helpers.PIPE_CFG) in this process, shared
by the module; the kill test is one plain `python launch/pretrain.py` of stage 0 alone."""
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_config
from launch_helpers import PIPE_CFG, error_lines, launch_here

RUN = os.path.join("runs", "pipe")  # relative to the working directory, as README's runs/demo


@contextlib.contextmanager
def inside(directory):
    old = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


def launch(work, *overrides) -> tuple[int, str]:
    """The entry point in this process from `work`, with the relative run directory; (code, stdout)."""
    out = io.StringIO()
    with inside(work), contextlib.redirect_stdout(out):
        code = launch_here(str(work / "pipe.yaml"), RUN, *overrides)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(working directory, stdout of the first launch) of one finished run at <work>/runs/pipe."""
    work = tmp_path_factory.mktemp("lines")
    (work / "pipe.yaml").write_text(PIPE_CFG.format(data=work / "data", root=ROOT))
    code, out = launch(work)
    assert code == 0
    return work, out


def files(run) -> dict:
    return {os.path.relpath(os.path.join(r, n), run): (os.stat(os.path.join(r, n)).st_mtime_ns,
                                                       open(os.path.join(r, n), "rb").read())
            for r, _, names in os.walk(run) for n in names}


@pytest.mark.launch
def test_end_of_run_line_names_the_report_on_first_run_and_rerun(finished):
    work, first = finished
    want = f"Report: {RUN}/report.md"
    assert want in first.splitlines()[-2], first
    assert (work / RUN / "report.md").is_file()
    code, again = launch(work)
    assert code == 0 and want in again.splitlines()[-2], again


@pytest.mark.launch
def test_refused_launch_leaves_the_run_directory_as_it_was(finished, capsys):
    work, _ = finished
    run = work / RUN
    before = files(run)
    code, out = launch(work, "train.lr=2e-3")
    assert code == 2 and out == ""
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "step 'stage_0/train' already finished with different settings" in err[0], err
    assert "train.lr: 0.001 -> 0.002" in err[0]
    assert files(run) == before  # not a byte or a modification time
    assert yaml.safe_load(open(run / "config.yaml"))["train"]["lr"] == 0.001


@pytest.mark.launch
def test_results_name_the_models_relative_to_the_run_directory(finished):
    work, _ = finished
    text = (work / RUN / "eval" / "results.json").read_text()
    results = json.loads(text)
    assert {name: r["model"] for name, r in results.items()} == {
        "stage_0": "stage_0/checkpoint.pt", "stage_1": "stage_1/checkpoint.pt", "integrated": "integrated/model.pt"}
    assert str(work) not in text  # equal results in two run directories are equal files


@pytest.mark.launch
def test_kill_at_a_training_step_stops_right_after_it(tmp_path, shards):
    """Step 3 of 6 with checkpoints every 4 steps: the kill comes after step 3 (its checkpoint saved
    for the resume), not at the next checkpoint boundary, step 4."""
    cfg = tiny_config(tmp_path, shards)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "launch/pretrain.py", "--config", cfg, "--run-dir", str(run),
                           "train.checkpoint_every=4", "train.log_every=1", "debug.kill_at=stage_0/train:3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    assert proc.returncode == 137, proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in open(run / "stage_0" / "metrics.jsonl")]
    assert steps == [1, 2, 3]
    assert os.listdir(run / "stage_0" / "checkpoints") == ["step_00000003.pt"]
