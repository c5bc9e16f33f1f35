"""The dry run's time estimate: hours from the shipped measured rates, projections labelled, and
every missing rate named."""
import pytest

from mcl_dist.pipeline.time_estimate import (EMBED_RATES, KMEANS_RATES, TRAIN_RATES, comm_seconds_per_step, estimate,
                                    format_estimate)


def test_one_gpu_hours_from_the_measured_rates():
    est = estimate("ViT-B-32", "NVIDIA H200", 1, [0, 1_000_000], embed_rows=2_000_000, kmeans_iters=20, global_batch=256)
    train, embed, km = TRAIN_RATES[0], EMBED_RATES[0], KMEANS_RATES[0]
    s1 = est["stages"][1]
    assert est["stages"][0]["train_h"] == 0.0  # pretrained stage 0
    # an MCL stage trains at the measured 0.854x of the stage-0 rate
    assert s1["train_h"] == pytest.approx(1_000_000 / (0.854 * train["samples_per_s_per_gpu"]) / 3600)
    assert s1["embed_h"] == pytest.approx(2_000_000 / embed["samples_per_s_per_gpu"] / 3600)
    assert s1["kmeans_h"] == pytest.approx(22 * km["s_per_iter_per_mrow"] * 2 / 3600)  # D 512 = measured width
    assert est["total_h"] == pytest.approx(s1["train_h"] + s1["embed_h"] + s1["kmeans_h"])
    assert est["complete"] and not est["projection"] and not est["missing"]
    assert {r["commit"] for r in est["rates"]} == {"a74663b"}
    text = "\n".join(format_estimate(est))
    assert "stage 0: pretrained, nothing to train" in text and "+17% time" in text
    assert "assumes 16 CPU cores and 8 loader workers per GPU" in text


def test_stage_zero_and_mcl_stages_rates():
    est = estimate("ViT-B-32", "H200", 1, [1_000_000, 1_000_000], embed_rows=0, global_batch=1000)
    s0, s1 = est["stages"]
    assert s1["train_h"] == pytest.approx(s0["train_h"] / 0.854)


def test_eight_gpus_are_a_projection_with_communication():
    one = estimate("ViT-B-32", "H200", 1, [1_024_000], global_batch=1024)
    eight = estimate("ViT-B-32", "H200", 8, [1_024_000], global_batch=1024)
    comm = comm_seconds_per_step(8, 1024, 151_277_313, 512, 450.0)
    assert comm > 0
    assert eight["stages"][0]["train_h"] == pytest.approx(one["stages"][0]["train_h"] / 8 + 1000 * comm / 3600)
    assert eight["projection"] and "projection" in format_estimate(eight)[0]
    assert any("data-sheet NVLink" in n for n in eight["notes"])


def test_missing_rates_are_named_not_guessed():
    est = estimate("ViT-L-14", "H200", 1, [0, 500_000, 500_000], embed_rows=1_000_000)
    assert est["missing"] == ["no measured rate for training ViT-L-14 on H200",
                              "no measured rate for embedding with ViT-L-14 on H200"]
    assert est["stages"][1]["train_h"] is None and est["stages"][1]["embed_h"] is None
    assert est["stages"][1]["kmeans_h"] > 0  # k-means' rate depends on the GPU and width, not the model
    assert not est["complete"] and est["total_h"] is None and est["stages"][1]["total_h"] is None
    lines = format_estimate(est)
    text = "\n".join(lines)
    assert "no measured rate for training ViT-L-14 on H200" in text and "partial" in text
    stage1 = next(line for line in lines if line.startswith("  stage 1:"))
    assert stage1.startswith("  stage 1: train unknown, embed unknown, k-means ") and stage1.endswith("total unknown")
    total = next(line for line in lines if line.startswith("  total:"))
    assert total.startswith("  total: unknown (partial: rates missing; the parts with rates add up to ")
    assert " 0.0 min" not in text and "0.00 h" not in text
    other = estimate("ViT-B-32", "A100", 1, [100])
    assert other["missing"] == ["no measured rate for training ViT-B-32 on A100"]
    assert "  total: unknown (partial: rates missing)" in format_estimate(other)
    assert "  stage 0: train unknown, total unknown" in format_estimate(other)
