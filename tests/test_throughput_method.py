"""The throughput method's arithmetic: window rates from each trainer's own step log, data-wait
share, per-round ratios (mcl_dist/bench/throughput.py)."""
import json

import pytest

from mcl_dist.bench.throughput import Recipe, lock_overrides, open_clip_window, ours_window, ratio_stats

OC_LOG = "\n".join(
    f"INFO | Train Epoch: 0 [ {i * 64}/640 (10%)] Data (t): {d:.3f} Batch (t): {64 / r:.3f}, {r:#g}/s, {r:#g}/s/gpu "
    f"LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 4.1 (4.1) Loss: 4.1 (4.1)"
    for i, (d, r) in enumerate([(0.9, 10.0), (0.010, 100.0), (0.020, 200.0), (0.0, 50.0)]))


def test_open_clip_window_is_samples_over_the_summed_intervals():
    w = open_clip_window(OC_LOG, warmup=1, global_batch=64)
    intervals = [64 / 100, 64 / 200, 64 / 50]  # the warm-up step (10/s) is left out
    assert w["timed_steps"] == 3
    assert w["samples_per_s"] == pytest.approx(3 * 64 / sum(intervals))  # not the median (100)
    assert w["data_wait_share"] == pytest.approx(0.030 / sum(intervals))


def test_ours_window_from_metrics(tmp_path):
    (tmp_path / "stage_0").mkdir()
    rows = [{"step": s, "samples_per_s": r, "data_time": d} for s, r, d in [(1, 5.0, 1.0), (2, 128.0, 0.1), (3, 64.0, 0.5)]]
    (tmp_path / "stage_0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = ours_window(str(tmp_path), warmup=1, global_batch=128)
    assert w["samples_per_s"] == pytest.approx(256 / 3.0) and w["data_wait_share"] == pytest.approx(0.6 / 3.0)
    with pytest.raises(ValueError, match="no timed steps"):
        ours_window(str(tmp_path), warmup=3, global_batch=128)


def test_ratio_per_round_and_flags():
    r = ratio_stats([110.0, 90.0, 120.0], [100.0, 100.0, 100.0])
    assert r["ratios"] == pytest.approx([1.1, 0.9, 1.2]) and (r["min"], r["median"], r["max"]) == pytest.approx((0.9, 1.1, 1.2))
    ours, theirs = lock_overrides(Recipe(lock_image=True, lock_image_unlocked_groups=6, lock_text=True, quick_gelu=True))
    assert "model.lock_image_unlocked_groups=6" in ours and "model.force_quick_gelu=true" in ours
    assert theirs == ["--lock-image", "--lock-image-unlocked-groups", "6", "--lock-text", "--lock-text-freeze-layer-norm",
                      "--force-quick-gelu"]
