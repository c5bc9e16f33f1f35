"""`launch/pretrain.py --dry-run` on the real-run configs: the plan, checked against a hand
computation, and nothing written. Shard lists point at small test shards (CC12M is not here);
samples per epoch come from data.num_samples, as for remote shards."""
import os
import re
import sys

import pytest

from conftest import ROOT, write_test_shards
import forked_ranks
from mcl_dist.config.load import load_config
from mcl_dist.pipeline.dry_run import build_plan, format_plan
from mcl_dist.pipeline.time_estimate import estimate
from mcl_dist.training.memory_estimate import ACTIVATIONS

REAL = ["configs/cc12m_vit_l14_paper.yaml", "configs/cc12m_vit_l14.yaml", "configs/cc12m_vit_b32.yaml", "configs/cc12m_rn50.yaml"]
N = 10_000_000  # samples per epoch (CC12M as downloaded is about this size)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Eight small shards: the run refuses fewer shards than ranks, and these plans have 8 ranks."""
    return write_test_shards(str(tmp_path_factory.mktemp("shards8")), n_shards=8, per_shard=4)


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def overrides(shards, *extra):
    return [f"data.train_shards={'::'.join(shards)}", f"data.num_samples={N}", *extra]


@pytest.mark.launch
def test_paper_config_cli_prints_the_hand_computed_plan_and_writes_nothing(tmp_path, shards):
    work = tmp_path / "cwd"
    work.mkdir()
    before = files_under(os.path.dirname(shards[0]))
    argv = [os.path.join(ROOT, "launch/pretrain.py"), "--config", os.path.join(ROOT, REAL[0]),
            "--dry-run", "--world-size", "8", *overrides(shards)]
    proc = forked_ranks.python(argv, cwd=work, timeout=300,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # by hand: 1,000 per GPU x 8 ranks = 8,000 per step, no accumulation;
    # 10,000,000 // 8,000 = 1,250 steps an epoch x 20 epochs = 25,000 steps per stage
    assert "global batch 8000 = 8 ranks x micro-batch 1000 x accumulation 1" in out
    assert re.search(r"^0\s+pretrained 'openai' taken as stage 0", out, re.M)
    for s in (1, 2, 3):  # K = 10, label groups of <= one GPU's micro-batch: nothing gathered
        assert re.search(rf"^{s}\s+<=25,000\s+200,000,000\s+0.0005\s+10\s+1000\s+base\s+no\s", out, re.M), out
    assert "ViT-L-14, 427,616,513 parameters, feature dim 768" in out
    # 10,000,000 / 8 ranks x 768 dims x 2 bytes (fp16)
    assert f"embeddings 1,250,000 x 768 fp16 = {1_250_000 * 768 * 2 / 2**30:.1f} GiB" in out
    assert "runs/cc12m_vit_l14_paper/stage_3/embed/part{0000..0007}-of0008.feats.npy" in out
    assert "runs/cc12m_vit_l14_paper/stage_3/embed/part{0000..0007}-of0008.keys.npy" in out
    assert "runs/cc12m_vit_l14_paper/integrated/model.pt" in out
    # no download in a dry run; one note for the tag both keys name
    assert "note: model.pretrained and stages.0.pretrained: open_clip weights 'openai' (downloaded" in out
    assert proc.stderr.strip() == "", proc.stderr
    assert files_under(work) == [] and files_under(os.path.dirname(shards[0])) == before


@pytest.mark.launch
@pytest.mark.parametrize("config", REAL)
def test_every_real_config_plans_without_pretrained_weights(config, shards):
    path = os.path.join(ROOT, config)
    cfg = load_config(path, overrides(shards, "model.pretrained=", "stages.0.pretrained="))
    plan = build_plan(cfg, path, "runs/x", world=8)
    text = format_plan(plan)
    gb = cfg.train.global_batch_size
    assert plan["micro"] == gb // 8 and plan["accum"] == 1
    steps = 20 * (N // gb)  # every config trains 20 epochs a stage
    assert [st["steps"] for st in plan["stages"]] == [steps] * len(cfg.stages)
    assert plan["stages"][0]["exact"] and not any(st["exact"] for st in plan["stages"][1:])
    assert re.search(rf"^0\s+{steps:,}\s+{steps * gb:,}\s", text, re.M), text
    if config != REAL[0]:  # our recommendation: K 32, groups of 32 inside a rank's micro-batch
        assert [(st["k"], st["group_size"], st["init"], st["gather"]) for st in plan["stages"][1:]] == \
            [(32, 32, "previous", False)] * 3  # four stages: docs/results.md
    assert plan["stages"][1]["trainable"] < plan["model"]["params"]  # text tower locked
    # schedule, precision, epochs, memory per rank and the launch lines
    t = cfg.train
    assert (f"{t.lr_scheduler} lr {t.lr:g}, warm-up {t.warmup_steps} steps; precision {t.precision};" in text)
    assert "; 20 epochs;" in text
    assert f"total: <={sum(st['samples'] for st in plan['stages']):,} samples over 4 trained stage(s)" in text
    assert re.search(r"^  stage 1: weights [\d.]+ \+ gradients [\d.]+ \+ optimizer [\d.]+ \+ activations [\d.]+ = "
                     r"[\d.]+ GiB$", text, re.M), text
    args = f"launch/pretrain.py --config {path} --run-dir runs/x"
    assert f"  torchrun --standalone --nproc_per_node 8 {args}" in text
    # the job's python is the one that planned it (it has torch), not whatever python3 is on PATH
    assert f"  MCL_PYTHON={sys.executable} sbatch launch/slurm/single_node.sbatch --config {path} --run-dir runs/x" in text
    assert "warning:" not in text  # every shipped config fits an 80 GB GPU at 8 ranks


@pytest.mark.launch
def test_memory_estimate_by_hand_and_the_vit_l14_warning(shards):
    """ViT-L-14 (QuickGELU) with both towers training, micro-batch 1,000 on one rank: weights, gradients
    and AdamW's two moments in fp32, plus 1,000 x the measured activations; far over any GPU."""
    path = os.path.join(ROOT, REAL[1])
    over = overrides(shards, "model.pretrained=", "stages.0.pretrained=", "stages=[{}]", "model.lock_text=false",
                     "model.lock_image=false", "train.global_batch_size=1000")
    cfg = load_config(path, over)
    plan = build_plan(cfg, path, "runs/x", world=1)
    p = plan["model"]["params"]
    assert plan["model"]["trainable"][0] == p
    assert cfg.model.force_quick_gelu  # QuickGELU saves more for backward: its own measured row
    act = 1000 * (ACTIVATIONS["ViT-L-14-quickgelu"]["image"] + ACTIVATIONS["ViT-L-14-quickgelu"]["text"])
    total = 4 * p + 4 * p + 8 * p + act
    text = format_plan(plan)
    assert f"= {total / 2**30:.1f} GiB" in text
    assert (f"warning: stage 0 needs ~{total / 2**30:.0f} GiB per rank (micro-batch 1000 of ViT-L-14), more than "
            f"the 79 GiB of one a100-80gb") in text
    assert "torchrun --standalone --nproc_per_node 1 " in text
    # the same run on 8 ranks (125 a rank) with the paper's locks fits: no warning
    eight = format_plan(build_plan(load_config(path, overrides(shards, "model.pretrained=", "stages.0.pretrained=")),
                                   path, "runs/x", world=8))
    assert "warning:" not in eight


@pytest.mark.launch
@pytest.mark.parametrize("config", REAL)
def test_every_real_config_prints_an_hours_estimate_or_names_the_missing_rate(config, shards):
    """Hours from the shipped measured rates (mcl_dist/pipeline/time_estimate.py) on the chosen GPUs: ViT-B-32
    has H200 rates (8 GPUs are a labelled projection); the others name each rate not measured."""
    path = os.path.join(ROOT, config)
    cfg = load_config(path, overrides(shards, "model.pretrained=", "stages.0.pretrained="))
    plan = build_plan(cfg, path, "runs/x", world=8, gpu="h200")
    text = format_plan(plan)
    model = plan["model"]["name"].removesuffix("-quickgelu")
    assert f"time estimate (projection): {model} on 8 x H200" in text
    est = estimate(model, "H200", 8, [st["samples"] for st in plan["stages"]], embed_rows=N,
                   kmeans_iters=cfg.cluster.kmeans_iters, dim=plan["model"]["dim"], global_batch=cfg.train.global_batch_size,
                   grad_params=max(plan["model"]["trainable"]))
    if model == "ViT-B-32":
        assert est["complete"] and est["total_h"] > 0 and f"  total: {est['total_h']:.2f} h\n" in text
        assert "data-sheet NVLink" in text
    else:
        assert not est["complete"] and est["total_h"] is None
        assert f"  no measured rate for training {model} on H200\n" in text
        partial = "  total: unknown (partial: rates missing"
        assert partial in text
        if est["known_h"] > 0:  # k-means has an H200 rate: the parts with rates are summed, not called the total
            assert f"{partial}; the parts with rates add up to " in text


@pytest.mark.launch
def test_tensorboard_path_only_when_report_to_names_it(shards):
    path = os.path.join(ROOT, REAL[2])
    for report_to, shown in (("tensorboard", True), ("", False)):
        cfg = load_config(path, overrides(shards, f"train.report_to={report_to}"))
        text = format_plan(build_plan(cfg, path, "runs/x", world=8))
        assert ("tensorboard: tensorboard --logdir runs/x" in text) == shown
        assert ("runs/x/stage_1/tb/" in text) == shown


def test_demo_dry_run_makes_no_synthetic_data(tmp_path, monkeypatch, capsys):
    from mcl_dist.pipeline.dry_run import dry_run

    monkeypatch.chdir(tmp_path)
    assert dry_run(os.path.join(ROOT, "configs/demo.yaml"), None, ["model.config_file=" +
                   os.path.join(ROOT, "configs/models/tiny-vit.json")], world=2) == 0
    out = capsys.readouterr().out
    # 2,048 synthetic samples, batch 128: 16 steps an epoch x 3 epochs; 64 per rank
    assert "2 ranks x micro-batch 64 x accumulation 1" in out
    assert re.search(r"^0\s+48\s+6,144\s", out, re.M) and re.search(r"^2\s+<=48\s", out, re.M)
    assert files_under(tmp_path) == []


def test_img2dataset_stats_files_count_the_samples(tmp_path):
    """img2dataset writes <shard>_stats.json; its 'successes' is used instead of reading the tars."""
    import json

    from conftest import write_test_shards
    from mcl_dist.pipeline.dry_run import data_plan

    urls = write_test_shards(str(tmp_path), n_shards=2, per_shard=8)
    cfg = load_config(None, [f"data.train_shards={'::'.join(urls)}"])
    assert data_plan(cfg) == {"shards": 2, "samples": 16, "source": "tar headers"}  # no stats yet
    for u, n in zip(urls, (700, 300)):
        with open(u[:-len(".tar")] + "_stats.json", "w") as f:
            json.dump({"count": 1000, "successes": n, "failed_to_download": 1000 - n}, f)
    assert data_plan(cfg) == {"shards": 2, "samples": 1000, "source": "img2dataset *_stats.json"}


def test_unknown_pretrained_tag_is_a_clear_error(shards):
    from mcl_dist.config.schema import ConfigError

    path = os.path.join(ROOT, REAL[1])
    cfg = load_config(path, overrides(shards, "model.pretrained=opena"))
    with pytest.raises(ConfigError, match=r"'model.pretrained': 'opena' is neither a local file nor an open_clip tag"):
        build_plan(cfg, path, "runs/x", world=8)
