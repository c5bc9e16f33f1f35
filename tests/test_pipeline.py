"""The whole MCL pipeline under a real torchrun: 2 gloo ranks x 2 workers, tiny ViT, synthetic
shards, 2 stages, accumulation 2, several label groups per micro-batch."""
import fnmatch
import glob
import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, torchrun


def config(tmp_path, data_dir):
    path = os.path.join(str(tmp_path), "pipe.yaml")
    with open(path, "w") as f:
        f.write(f"""
data: {{synthetic: true, synthetic_dir: {data_dir}, synthetic_train: 320, synthetic_test: 64,
        synthetic_samples_per_shard: 64, workers: 2, shuffle_buffer: 32}}
model: {{config_file: {ROOT}/configs/models/tiny-vit.json}}
train: {{global_batch_size: 32, accum_freq: 2, max_steps: 4, lr: 1.0e-3, warmup_steps: 1, log_every: 1,
         checkpoint_every: 2}}
cluster: {{kmeans_iters: 10, min_label_size: 2}}
stages: [{{}}, {{k: 6, group_size: 4}}]
eval: {{probe_max_samples: 128}}
debug: {{log_batches: true}}
""")
    return path


def run(cfg, run_dir, *overrides, check=True):
    return torchrun(["launch/pretrain.py", "--config", cfg, "--run-dir", str(run_dir), *overrides], check=check)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    cfg = config(tmp, tmp / "data")
    out = run(cfg, tmp / "run")
    return cfg, tmp / "run", out


@pytest.mark.launch
def test_every_step_done_and_outputs_valid(finished):
    cfg, run_dir, out = finished
    manifest = json.load(open(run_dir / "manifest.json"))
    steps = ["stage_0/train", "stage_1/embed", "stage_1/kmeans", "stage_1/labels", "stage_1/train",
             "integrate", "eval", "report"]
    assert manifest["order"] == steps
    assert all(manifest["steps"][s]["status"] == "done" for s in steps)
    assert "Report: " in out.stdout and os.path.exists(run_dir / "report.md")
    for png in ("loss_curves.png", "cluster_sizes.png", "mmvp_by_stage.png"):
        assert os.path.getsize(run_dir / png) > 1000
    # stage checkpoints load through open_clip's own factory
    open_clip.add_model_config(os.path.join(ROOT, "configs/models/tiny-vit.json"))
    for s in (0, 1):
        open_clip.create_model_and_transforms("tiny-vit", pretrained=str(run_dir / f"stage_{s}" / "checkpoint.pt"))
    results = json.load(open(run_dir / "eval" / "results.json"))
    assert set(results) == {"stage_0", "stage_1", "integrated"}
    for r in results.values():
        assert 0 <= r["mmvp"]["mean"] <= 1 and set(r["mmvp"]["per_category"]) >= {"color", "shape"}
        assert {"color", "shape"} <= set(r["zero_shot"]) and {"color", "shape"} <= set(r["linear_probe"])


@pytest.mark.launch
def test_embedding_covers_every_sample_exactly_once(finished):
    """5 shards over 2 ranks: rank 0 embeds 3, rank 1 embeds 2; together every sample once."""
    import numpy as np

    from mcl_dist.clustering.embedding import list_parts
    from mcl_dist.data.tar_index import build_or_load_index

    _, run_dir, _ = finished
    parts = list_parts(str(run_dir / "stage_1" / "embed"))
    assert [os.path.basename(f) for f, _ in parts] == ["part0000-of0002.feats.npy", "part0001-of0002.feats.npy"]
    keys = np.concatenate([np.load(k) for _, k in parts])
    feats = np.concatenate([np.load(f) for f, _ in parts])
    assert feats.dtype == np.float16 and len(feats) == len(keys)
    assert np.allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1.0, atol=1e-2)
    shards = sorted(glob.glob(str(run_dir.parent / "data" / "train-*.tar")))
    assert len(shards) == 5
    index = build_or_load_index(shards, str(run_dir / "index"), progress=False)
    assert len(keys) == len(set(keys.tolist())) == len(index) == 320
    assert set(keys.tolist()) == set(index.keys.astype(str).tolist())


@pytest.mark.launch
def test_integrated_similarity_is_mean_of_stage_similarities(finished):
    from mcl_dist.integration.integrated_model import load_model

    _, run_dir, _ = finished
    integ, preprocess, tokenizer = load_model(str(run_dir / "integrated" / "model.pt"))
    images = torch.randn(4, 3, 32, 32)
    tokens = tokenizer(["a red square", "a blue circle", "a green star", "a cat"])
    with torch.no_grad():
        sim = integ.encode_image(images) @ integ.encode_text(tokens).T
        per_stage = []
        for s in (0, 1):
            m, _, _ = load_model(str(run_dir / f"stage_{s}" / "checkpoint.pt"))
            per_stage.append(F.normalize(m.encode_image(images), dim=-1) @ F.normalize(m.encode_text(tokens), dim=-1).T)
    assert torch.allclose(sim, sum(per_stage) / 2, atol=1e-5)


@pytest.mark.launch
def test_batch_log_shows_same_label_groups_and_full_coverage(finished):
    from mcl_dist.core.files import load_npz
    from mcl_dist.data.sampler import check_batch_log, plan_epoch

    _, run_dir, _ = finished
    records = []
    for path in sorted(glob.glob(str(run_dir / "stage_1" / "batches" / "rank*.jsonl"))):
        records += [json.loads(line) for line in open(path)]
    assert {r["rank"] for r in records} == {0, 1} and {r["micro_step"] for r in records} == {0, 1}
    summary = check_batch_log(records)  # raises on a mixed group, a lone sample or a repeated key
    assert summary["label_purity"] == 1.0 and summary["groups_per_micro_batch"] > 1
    labels = load_npz(str(run_dir / "stage_1" / "labels.npz"))
    keys = labels["keys"].astype(str)
    by_key = dict(zip(keys, labels["labels"]))
    for r in records:
        assert r["labels"] == [int(by_key[k]) for k in r["keys"]]
    # the run's 4 steps are the first 4 steps of the epoch-0 plan, in order, on both ranks
    plan = plan_epoch(labels["labels"], epoch=0, seed=1, world_size=2, micro_batch=8, accum=2, group_size=4)
    for rank in (0, 1):
        want = [keys[idx].tolist() for step, _, idx, _ in plan.micro_batches(rank) if step < 4]
        got = [r["keys"] for r in records if r["rank"] == rank]
        assert got == want


@pytest.mark.launch
def test_rerun_skips_everything_and_changed_config_is_refused(finished):
    cfg, run_dir, _ = finished
    before = os.path.getmtime(run_dir / "stage_1" / "checkpoint.pt")
    out = run(cfg, run_dir)
    assert out.stderr.count("done already, skipped") == 8
    assert os.path.getmtime(run_dir / "stage_1" / "checkpoint.pt") == before
    out = run(cfg, run_dir, "stages.1.k=5", check=False)
    assert out.returncode != 0
    assert "step 'stage_1/kmeans' already finished with different settings (k: 6 -> 5)" in out.stderr
    assert "use a new --run-dir" in out.stderr


@pytest.mark.launch
def test_labels_step_records_the_stopping_signal(finished):
    """stage_1/labels logs how much the new clusters split the current (root) label."""
    _, run_dir, _ = finished
    out = json.load(open(run_dir / "manifest.json"))["steps"]["stage_1/labels"]["outputs"]
    assert out["signal/labels_before"] == 1 and out["signal/split_labels"] == 1.0
    assert out["signal/labels_after"] == out["num_labels"] > 1
    assert out["signal/nmi"] == 0.0  # the root label carries no information


@pytest.mark.launch
def test_files_of_the_run_are_exactly_the_plans_outputs(finished, capsys):
    """Every file the run left is under a path of the plan (the steps' outputs plus the run's own
    files), every path of the plan without a wildcard exists, and --dry-run prints those paths."""
    from braceexpand import braceexpand

    from mcl_dist.config.load import load_config
    from mcl_dist.pipeline.dry_run import dry_run
    from mcl_dist.steps import plan_steps, run_files

    cfg_path, run_dir, _ = finished
    cfg = load_config(cfg_path)
    planned = run_files(cfg, str(run_dir)) + [p for st in plan_steps(cfg, 2) for p in st.outputs(str(run_dir), 2)]
    expanded = [p for pattern in planned for p in braceexpand(pattern)]
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(run_dir) for f in fs)

    def covered(path):
        return any(path.startswith(p) if p.endswith("/") else fnmatch.fnmatch(path, p) for p in expanded)

    assert [f for f in found if not covered(f)] == []
    assert [p for p in expanded if "*" not in p and not os.path.exists(p)] == []
    assert len({p for p in expanded if "-of0002." in p}) == 3 * 2 + 2  # feats + keys + stats per rank, assignments
    assert dry_run(cfg_path, str(run_dir), [], world=2) == 0
    printed = capsys.readouterr().out.split("paths written:\n", 1)[1].splitlines()
    assert [line.strip() for line in printed] == planned


@pytest.mark.launch
def test_integration_choice_is_a_setting_of_the_integrate_step(finished):
    """Runs of the default integration keep their fingerprints (the rerun above skipped every step);
    raw integration changes the integrate step's settings: refused, then redone with --redo."""
    from mcl_dist.integration.integrated_model import load_model

    cfg, run_dir, _ = finished
    out = run(cfg, run_dir, "model.integration=raw", check=False)
    assert out.returncode != 0
    assert "step 'integrate' already finished with different settings" in out.stderr
    run(cfg, run_dir, "model.integration=raw", "--redo", "integrate", "eval.enabled=false")
    assert load_model(str(run_dir / "integrated" / "model.pt"))[0].integration == "raw"
