"""The demo reaches the user without a single warning (Python warnings or WARNING log lines).
A shortened demo (fewer samples and steps, two stages) runs every step the full one does: stage-0
DDP training, embed, k-means, labels, an MCL stage, integration, evaluation and the report.
Under the real torchrun: forked ranks (tests/forked_ranks.py) would hide what the imports print."""
import re

import pytest

from conftest import torchrun


@pytest.mark.launch
def test_shortened_demo_has_no_warning_on_stderr(tmp_path):
    proc = torchrun(["launch/pretrain.py", "--config", "configs/demo.yaml", "--run-dir", str(tmp_path / "run"),
                     f"data.synthetic_dir={tmp_path / 'data'}", "data.synthetic_train=512", "data.synthetic_test=128",
                     "data.synthetic_samples_per_shard=128", "train.max_steps=2", "train.global_batch_size=64",
                     "eval.probe_max_samples=128", "stages=[{}, {k: 8, group_size: 8}]"], timeout=900,
                    real=True)  # fresh ranks: a warning printed while importing counts too
    assert "Report: " in proc.stdout
    # Python's warnings print "file:line: SomethingWarning: message"; our logging prints " WARNING "
    noisy = [line for line in proc.stderr.splitlines() if re.search(r"\w+Warning\b|\bWARNING\b", line)]
    assert noisy == [], "\n".join(noisy)
