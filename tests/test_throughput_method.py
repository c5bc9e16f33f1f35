"""The throughput method's arithmetic: window rates from each trainer's own step log, data-wait
share, per-round ratios (mcl_dist/bench/throughput.py)."""
import json
import subprocess

import pytest

from mcl_dist.bench import throughput, train_bench
from mcl_dist.bench.throughput import (ChildFailed, Recipe, _TimedLoader, is_alloc_failure, lock_overrides,
                                       open_clip_window, ours_window, ratio_stats, rounds)

# open_clip_train's own `Data (t)` (0.5 s each, GPU time included) must not be what is reported:
# the loader shim's lines (mcl_bench data_wait_s) are
OC_LOG = "\n".join(
    f"mcl_bench data_wait_s {d:.6f}\n"
    f"INFO | Train Epoch: 0 [ {i * 64}/640 (10%)] Data (t): 0.500 Batch (t): {64 / r:.3f}, {r:#g}/s, {r:#g}/s/gpu "
    f"LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 4.1 (4.1) Loss: 4.1 (4.1)"
    for i, (d, r) in enumerate([(0.9, 10.0), (0.010, 100.0), (0.020, 200.0), (0.0, 50.0)]))


def test_open_clip_window_is_samples_over_the_summed_intervals():
    w = open_clip_window(OC_LOG, warmup=1, global_batch=64)
    intervals = [64 / 100, 64 / 200, 64 / 50]  # the warm-up step (10/s) is left out
    assert w["timed_steps"] == 3
    assert w["samples_per_s"] == pytest.approx(3 * 64 / sum(intervals))  # not the median (100)
    assert w["data_wait_share"] == pytest.approx(0.030 / sum(intervals))  # the shim's waits, not Data (t)
    assert open_clip_window(OC_LOG, 1, 64, expected=3)["timed_steps"] == 3
    with pytest.raises(ValueError, match="open_clip_train: 3 timed steps logged, expected 5"):
        open_clip_window(OC_LOG, 1, 64, expected=5)
    with pytest.raises(ValueError, match="loader-shim lines"):
        open_clip_window(OC_LOG.replace("mcl_bench", "other"), 1, 64)


def test_steps_must_be_whole_loader_waves():
    Recipe(steps=16, warmup=8, workers=8).check()
    with pytest.raises(ValueError, match=r"steps \(10\) must be a multiple of the loader workers \(8\)"):
        Recipe(steps=10, warmup=3, workers=8).check()
    with pytest.raises(ValueError, match="must exceed warmup"):
        Recipe(steps=8, warmup=8, workers=8).check()


def test_timed_loader_times_next_and_delegates(capsys):
    class Loader(list):
        num_batches, num_samples = 3, 12

    timed = _TimedLoader(Loader([1, 2, 3]), printing=True)
    assert list(timed) == [1, 2, 3] and (timed.num_batches, timed.num_samples, len(timed)) == (3, 12, 3)
    assert capsys.readouterr().err.count("mcl_bench data_wait_s ") == 3  # no line for the StopIteration


@pytest.mark.parametrize("text,alloc", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
    ("RuntimeError: mat1 and mat2 shapes cannot be multiplied", False)])
def test_allocation_failures_are_recognised(text, alloc):
    assert is_alloc_failure(text) is alloc


def test_children_halve_the_batch_on_any_allocation_failure(monkeypatch):
    """Both arms restart at half the batch when either fails to allocate; other failures stop."""
    seen = []

    def arm(name, fail_above, text):
        def run(r, *args, **kw):
            seen.append((name, r.batch_per_gpu))
            if r.batch_per_gpu > fail_above:
                raise ChildFailed(name, "exit 1, no timed window", text)
            return {"samples_per_s": float(r.batch_per_gpu), "data_wait_share": 0.0, "timed_steps": r.timed_steps}
        return run

    monkeypatch.setattr(throughput, "run_ours", arm("ours", 64, "torch.OutOfMemoryError: CUDA out of memory"))
    monkeypatch.setattr(throughput, "run_open_clip", arm("open_clip_train", 32, "CUBLAS_STATUS_ALLOC_FAILED"))
    out = rounds(Recipe(batch_per_gpu=128, steps=4, warmup=2, workers=2), "s", 1, "w", {}, n_rounds=2)
    assert out["halved_from"] == [128, 64] and out["recipe"]["batch_per_gpu"] == 32
    assert seen[:3] == [("ours", 128), ("ours", 64), ("open_clip_train", 64)]
    assert out["ours"]["timed_steps"] == out["open_clip_train"]["timed_steps"] == [2, 2]
    monkeypatch.setattr(throughput, "run_open_clip", arm("open_clip_train", 32, "ValueError: bad shard"))
    with pytest.raises(ChildFailed, match="bad shard"):
        rounds(Recipe(batch_per_gpu=128, steps=4, warmup=2, workers=2), "s", 1, "w", {}, n_rounds=1)


def test_metrics_are_parsed_before_a_non_zero_exit_counts(monkeypatch, tmp_path):
    log = OC_LOG + "\nTraceback ... OSError: [Errno 28] No space left on device"
    monkeypatch.setattr(train_bench, "torchrun",
                        lambda *a, **kw: subprocess.CompletedProcess([], 1, log, ""))
    r = Recipe(batch_per_gpu=64, steps=4, warmup=1, workers=1)
    w = throughput.run_open_clip(r, "s", str(tmp_path), {})
    assert w["timed_steps"] == 3 and w["note"] == "exited 1 after its timed window"
    monkeypatch.setattr(train_bench, "torchrun", lambda *a, **kw: subprocess.CompletedProcess(
        [], 1, "torch.OutOfMemoryError: CUDA out of memory", ""))
    with pytest.raises(ChildFailed) as failed:
        throughput.run_open_clip(r, "s", str(tmp_path), {})
    assert failed.value.alloc


def test_ours_window_from_metrics(tmp_path):
    (tmp_path / "stage_0").mkdir()
    rows = [{"step": s, "samples_per_s": r, "data_time": d} for s, r, d in [(1, 5.0, 1.0), (2, 128.0, 0.1), (3, 64.0, 0.5)]]
    (tmp_path / "stage_0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = ours_window(str(tmp_path), warmup=1, global_batch=128)
    assert w["samples_per_s"] == pytest.approx(256 / 3.0) and w["data_wait_share"] == pytest.approx(0.6 / 3.0)
    with pytest.raises(ValueError, match="ours: 2 timed steps logged, expected 3"):
        ours_window(str(tmp_path), warmup=1, global_batch=128, expected=3)
    with pytest.raises(ValueError, match="no timed steps"):
        ours_window(str(tmp_path), warmup=3, global_batch=128)


def test_ratio_per_round_and_flags():
    r = ratio_stats([110.0, 90.0, 120.0], [100.0, 100.0, 100.0])
    assert r["ratios"] == pytest.approx([1.1, 0.9, 1.2]) and (r["min"], r["median"], r["max"]) == pytest.approx((0.9, 1.1, 1.2))
    ours, theirs = lock_overrides(Recipe(lock_image=True, lock_image_unlocked_groups=6, lock_text=True, quick_gelu=True))
    assert "model.lock_image_unlocked_groups=6" in ours and "model.force_quick_gelu=true" in ours
    assert theirs == ["--lock-image", "--lock-image-unlocked-groups", "6", "--lock-text", "--lock-text-freeze-layer-norm",
                      "--force-quick-gelu"]
