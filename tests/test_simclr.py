"""Unimodal MCL: SimCLR stages on image-only shards (no captions) through the same pipeline."""
import glob
import json

import torch

import pytest

from conftest import torchrun, write_test_shards


@pytest.mark.launch
def test_two_stage_simclr_run_on_image_only_shards(tmp_path):
    urls = write_test_shards(str(tmp_path / "d"), n_shards=4, per_shard=32, no_caption=tuple(range(128)))
    cfg = tmp_path / "simclr.yaml"
    cfg.write_text(f"""
objective: simclr
simclr: {{arch: tiny, proj_hidden: 64, proj_dim: 32, color_jitter: 0.0, grayscale: 0.0}}
data: {{train_shards: "{'::'.join(urls)}", workers: 1, shuffle_buffer: 16}}
train: {{global_batch_size: 16, max_steps: 3, lr: 1.0e-3, warmup_steps: 1, log_every: 1, checkpoint_every: 3}}
cluster: {{kmeans_iters: 5, min_label_size: 2}}
stages: [{{}}, {{k: 4, group_size: 4}}]
eval: {{test_shards: "{'::'.join(urls[:2])}", label_fields: [color, shape], probe_max_samples: 64}}
debug: {{log_batches: true}}
""")
    run_dir = tmp_path / "run"
    torchrun(["launch/pretrain.py", "--config", str(cfg), "--run-dir", str(run_dir)])
    manifest = json.load(open(run_dir / "manifest.json"))
    assert all(step["status"] == "done" for step in manifest["steps"].values())
    # the batch log shows the same-cluster invariant
    from mcl_dist.data.sampler import check_batch_log

    records = []
    for path in glob.glob(str(run_dir / "stage_1" / "batches" / "rank*.jsonl")):
        records += [json.loads(line) for line in open(path)]
    assert check_batch_log(records)["label_purity"] == 1.0 and {r["rank"] for r in records} == {0, 1}
    # linear probe and k-NN per label field, per stage and integrated; no text evaluations
    results = json.load(open(run_dir / "eval" / "results.json"))
    for name in ("stage_0", "stage_1", "integrated"):
        assert set(results[name]["linear_probe"]) == {"color", "shape"}
        assert set(results[name]["knn"]) == {"color", "shape"}
        assert results[name]["zero_shot"] == {}
    # the integrated model concatenates the stages' normalised backbone features
    from mcl_dist.integration.integrated_model import load_model

    integ, preprocess, tokenizer = load_model(str(run_dir / "integrated" / "model.pt"))
    assert tokenizer is None
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = integ.encode_image(x)
        parts = [load_model(str(run_dir / f"stage_{s}" / "checkpoint.pt"))[0].encode_image(x, normalize=True)
                 for s in (0, 1)]
    assert torch.allclose(feats, torch.cat(parts, dim=1) / 2 ** 0.5, atol=1e-5)
