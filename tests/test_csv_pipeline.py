"""The whole MCL pipeline on a CSV data set (open_clip's `--dataset-type csv`) under a real
torchrun: 2 gloo ranks, tiny ViT, the demo's synthetic images written as files plus one CSV, 2
stages. The same invariants as on shards (tests/test_pipeline.py): every row embedded exactly
once, same-label groups in the planned stage's batches, the evaluation and the report written,
and a second launch skipping every step (the CSV's fingerprint is stable)."""
import fnmatch
import glob
import json
import os

import numpy as np
import pytest

from mcl_dist.clustering.embedding import list_parts
from mcl_dist.core.files import load_npz
from mcl_dist.data.sampler import check_batch_log
from mcl_dist.synthetic.trifeature import ensure_demo_data

from conftest import ROOT, torchrun
from csv_helpers import shards_to_csv

N_TRAIN = 192


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csvpipe")
    data = str(tmp / "data")
    paths = ensure_demo_data(data, n_train=N_TRAIN, n_test=64, samples_per_shard=64, progress=False)
    shards = sorted(glob.glob(os.path.join(data, "train-*.tar")))
    assert paths["train"] and len(shards) == 3
    csv_path = shards_to_csv(shards, str(tmp / "csv"), sep=",", absolute_every=4)
    cfg = os.path.join(str(tmp), "pipe.yaml")
    with open(cfg, "w") as f:
        f.write(f"""
data: {{synthetic: true, synthetic_dir: {data}, synthetic_train: {N_TRAIN}, synthetic_test: 64,
        synthetic_samples_per_shard: 64, workers: 2, shuffle_buffer: 32,
        train_shards: {csv_path}, dataset_type: csv, csv_separator: ","}}
model: {{config_file: {ROOT}/configs/models/tiny-vit.json}}
train: {{global_batch_size: 32, accum_freq: 2, max_steps: 3, lr: 1.0e-3, warmup_steps: 1, log_every: 1,
         checkpoint_every: 3}}
cluster: {{kmeans_iters: 8, min_label_size: 2, embed_batch_size: 32}}
stages: [{{}}, {{k: 5, group_size: 4}}]
eval: {{probe_max_samples: 96, batch_size: 64, metrics: [linear_probe, mmvp]}}
debug: {{log_batches: true}}
""")
    run_dir = tmp / "run"
    out = torchrun(["launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir)])
    return cfg, run_dir, csv_path, out


@pytest.mark.launch
def test_every_step_done_with_report_and_evaluation(finished):
    _, run_dir, csv_path, out = finished
    manifest = json.load(open(run_dir / "manifest.json"))
    assert all(manifest["steps"][s]["status"] == "done" for s in manifest["order"]) and len(manifest["order"]) == 8
    assert "Report: " in out.stdout and os.path.getsize(run_dir / "report.md") > 0
    assert f"{N_TRAIN} rows of {csv_path}" in out.stderr  # the run's log names its data
    assert json.load(open(run_dir / "data_check.json"))["samples"] == N_TRAIN
    results = json.load(open(run_dir / "eval" / "results.json"))
    # the probe is fitted on the CSV's rows, its labels read from the CSV's extra columns
    assert {"color", "shape"} <= set(results["integrated"]["linear_probe"])
    assert not os.path.exists(run_dir / "index")  # a CSV needs no tar index


@pytest.mark.launch
def test_embedding_covers_every_row_exactly_once(finished):
    _, run_dir, _, _ = finished
    parts = list_parts(str(run_dir / "stage_1" / "embed"))
    assert len(parts) == 2
    per_rank = [np.load(k).tolist() for _, k in parts]
    assert len(per_rank[0]) == len(per_rank[1]) == N_TRAIN // 2
    keys = per_rank[0] + per_rank[1]
    assert sorted(keys) == [f"{i:08d}" for i in range(N_TRAIN)]  # each row once, none twice


@pytest.mark.launch
def test_planned_batches_hold_same_label_groups(finished):
    _, run_dir, _, _ = finished
    records = []
    for path in sorted(glob.glob(str(run_dir / "stage_1" / "batches" / "rank*.jsonl"))):
        records += [json.loads(line) for line in open(path)]
    assert {r["rank"] for r in records} == {0, 1}
    summary = check_batch_log(records)  # raises on a mixed group, a lone sample or a repeated key
    assert summary["label_purity"] == 1.0 and summary["groups_per_micro_batch"] > 1
    labels = load_npz(str(run_dir / "stage_1" / "labels.npz"))
    by_key = dict(zip(labels["keys"].astype(str), labels["labels"]))
    assert len(by_key) == N_TRAIN
    for r in records:
        assert r["labels"] == [int(by_key[k]) for k in r["keys"]]


@pytest.mark.launch
def test_rerun_skips_every_step(finished):
    cfg, run_dir, _, _ = finished
    out = torchrun(["launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir)])
    assert out.stderr.count("done already, skipped") == 8


@pytest.mark.launch
def test_files_of_the_run_are_exactly_the_plans_outputs(finished, capsys):
    """As on shards (test_pipeline.py): every file under a planned path, every planned path there
    (a CSV run plans no tar index), and --dry-run prints the same paths."""
    from braceexpand import braceexpand

    from mcl_dist.config.load import load_config
    from mcl_dist.pipeline.dry_run import dry_run
    from mcl_dist.steps import plan_steps, run_files

    cfg_path, run_dir, _, _ = finished
    cfg = load_config(cfg_path)
    planned = run_files(cfg, str(run_dir)) + [p for st in plan_steps(cfg, 2) for p in st.outputs(str(run_dir), 2)]
    expanded = [p for pattern in planned for p in braceexpand(pattern)]
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(run_dir) for f in fs)
    covered = [f for f in found if any(f.startswith(p) if p.endswith("/") else fnmatch.fnmatch(f, p) for p in expanded)]
    assert covered == found
    assert [p for p in expanded if "*" not in p and not os.path.exists(p)] == []
    assert dry_run(cfg_path, str(run_dir), [], world=2) == 0
    out = capsys.readouterr().out
    assert f"data: {N_TRAIN} rows, {N_TRAIN} samples per epoch (rows of " in out
    assert [line.strip() for line in out.split("paths written:\n", 1)[1].splitlines()] == planned


@pytest.mark.launch
def test_cluster_inspector_reads_the_csv_rows(finished):
    from mcl_dist.clustering.cluster_inspect import stage_purity

    _, run_dir, _, _ = finished
    res = stage_purity(str(run_dir), 1, source="labels", attributes=["color", "shape"])
    assert set(res["mean_purity"]) == {"color", "shape"}  # the attributes came from the CSV's columns
    assert sum(g["size"] for g in res["groups"].values()) == N_TRAIN
