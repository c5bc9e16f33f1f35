"""One method for every trainer throughput figure: ours vs `open_clip_train` in alternating
rounds, each arm's samples per wall-clock second over its whole timed window.

    python tools/bench_throughput.py --model ViT-L-14 --lock-image-unlocked-groups 6 --lock-text \
        --quick-gelu --batch 1000 --precision amp_bf16 --device cuda --rounds 3

- Rounds alternate the arms: ours, open_clip_train, ours, open_clip_train, ... (>= 3 rounds), so
  a drift of the machine (clocks, page cache, a neighbour) hits both. The ratio is taken per round
  (ours_i / open_clip_train_i) and reported as min / median / max.
- Rate: both trainers log every step with their own clock, contiguous intervals (ours:
  `metrics.jsonl`, `samples_per_s` since the previous log; open_clip_train: `Batch (t)`, reset
  after every log). After `warmup` steps, rate = samples of the timed steps / the sum of their
  intervals, i.e. the whole timed window (not a median of per-step rates).
- Same everything else: model, locks, QuickGELU, per-GPU batch, steps, precision, DataLoader
  workers, shards, lr / wd / warm-up, no clipping, local loss + gathered features with gradient,
  one epoch of exactly `steps` steps, and the same AdamW implementation (fused: ours picks it,
  open_clip_train is given it by a shim, `_fused_adamw`).
- Equal step counts: open_clip_train rounds its epoch up to whole batches per loader worker, so
  `steps` must be a multiple of the workers (`Recipe.check`), and both arms' counted timed steps
  are parsed and must equal steps - warmup (else the round is an error, not a biased ratio).
- Data-wait share: time blocked on the loader / window (ours: `data_time`, the time in `next()`;
  open_clip_train: the same, timed by a shim around its loader, `_TimedLoader`. Its own
  `Data (t)` is not used: it starts its clock before the logging `.item()` syncs, so it holds
  GPU time too).
- The children write no checkpoints (ours stops after its stage's last step; open_clip_train's
  `torch.save` is a no-op), and a child's metrics are parsed before its exit status counts: a
  launch that fails after its timed window still gives its round. A child that fails to allocate
  (torch.OutOfMemoryError, or cuBLAS / cuDNN allocation errors, which are plain RuntimeErrors)
  halves the per-GPU batch of both arms and the rounds start again (`rounds`).
- Model-only ceiling (`ModelOnly`): the same model, locks, engine, loss and optimizer step on
  tensors already on the device: the rate with no data loading at all.
- MFU: samples/s x FLOPs per sample (counted while one real step runs, `flops.py`) / peak.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import torch

from mcl_dist.commands import pretrain

from mcl_dist.bench import train_bench
from mcl_dist.bench.devtime import sync
from mcl_dist.bench.flops import step_flops
from mcl_dist.config.schema import ModelConfig, TrainConfig
from mcl_dist.core import layout
from mcl_dist.model.open_clip_models import create
from mcl_dist.objectives.loss import ClipLoss
from mcl_dist.training.engine import DDPEngine
from mcl_dist.training.loop import StageTrainer

OC_LINE = re.compile(r"Data \(t\): [\d.]+ Batch \(t\): [\d.]+, ([\d.eE+]+)/s,")
SHIM_WAIT = re.compile(r"^mcl_bench data_wait_s ([\d.eE+-]+)$", re.M)  # _TimedLoader's line per batch
# what a failed allocation prints: torch's OutOfMemoryError, and cuBLAS / cuDNN / CUDA runtime
# allocation failures, which torch raises as plain RuntimeErrors
ALLOC_FAILURE = re.compile(r"OutOfMemoryError|CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|"
                           r"cudaErrorMemoryAllocation|CUDA error: out of memory")
MIN_BATCH = 16  # halving stops here: a smaller batch says nothing about the recipe


def is_alloc_failure(text: str) -> bool:
    return bool(ALLOC_FAILURE.search(text))


class ChildFailed(RuntimeError):
    """A trainer launch that gave no timed window; `alloc`: it failed to allocate memory."""

    def __init__(self, arm: str, why: str, output: str):
        self.alloc = is_alloc_failure(output)
        super().__init__(f"{arm}: {why}{' (allocation failure)' if self.alloc else ''}\n{output[-3000:]}")


@dataclass
class Recipe:
    model: str = "tiny-vit"
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    quick_gelu: bool = False
    batch_per_gpu: int = 16
    precision: str = "auto"  # ours' train.precision; open_clip_train gets the same (amp: fp16 + scaler in both)
    steps: int = 12
    warmup: int = 4
    workers: int = 1
    nproc: int = 1
    device: str = "cpu"

    @property
    def global_batch(self) -> int:
        return self.batch_per_gpu * self.nproc

    @property
    def timed_steps(self) -> int:
        return self.steps - self.warmup

    def check(self) -> None:
        """open_clip_train yields ceil(steps / workers) x workers batches: other step counts would
        time the two arms over different windows."""
        if self.steps % max(1, self.workers):
            raise ValueError(f"steps ({self.steps}) must be a multiple of the loader workers ({self.workers}): "
                             f"open_clip_train rounds its epoch up to whole batches per worker")
        if self.timed_steps < 1:
            raise ValueError(f"steps ({self.steps}) must exceed warmup ({self.warmup})")


def window(intervals: list[float], data_waits: list[float], samples_per_step: int) -> dict:
    """Rate and data-wait share over contiguous step intervals (seconds)."""
    total = sum(intervals)
    if not intervals or total <= 0:
        raise ValueError("no timed steps after the warm-up: raise steps or lower warmup")
    return {"samples_per_s": len(intervals) * samples_per_step / total, "data_wait_share": sum(data_waits) / total,
            "timed_steps": len(intervals), "window_s": total}


def counted(arm: str, w: dict, expected: int) -> dict:
    if w["timed_steps"] != expected:
        raise ValueError(f"{arm}: {w['timed_steps']} timed steps logged, expected {expected}: the arms would be "
                         f"timed over different windows")
    return w


def ours_window(run_dir: str, warmup: int, global_batch: int, expected: int | None = None) -> dict:
    with open(layout.metrics_path(layout.stage_dir(run_dir, 0))) as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["step"] > warmup]
    w = window([global_batch / r["samples_per_s"] for r in rows], [r["data_time"] for r in rows], global_batch)
    return w if expected is None else counted("ours", w, expected)


def open_clip_window(log: str, warmup: int, global_batch: int, expected: int | None = None) -> dict:
    """Step intervals from `Batch (t)`; data waits from the loader shim's lines (one per batch)."""
    rates, waits = OC_LINE.findall(log)[warmup:], [float(x) for x in SHIM_WAIT.findall(log)[warmup:]]
    if len(waits) < len(rates):
        raise ValueError(f"open_clip_train: {len(waits)} loader-shim lines for {len(rates)} logged steps")
    w = window([global_batch / float(rate) for rate in rates], waits[: len(rates)], global_batch)
    return w if expected is None else counted("open_clip_train", w, expected)


def ratio_stats(ours: list[float], theirs: list[float]) -> dict:
    ratios = [o / t for o, t in zip(ours, theirs)]
    return {"ratios": ratios, "min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}


def lock_overrides(r: Recipe) -> tuple[list[str], list[str]]:
    """(our dotted overrides, open_clip_train's flags) for the recipe's model options."""
    ours = [f"model.lock_image={str(r.lock_image).lower()}", f"model.lock_text={str(r.lock_text).lower()}",
            f"model.lock_image_unlocked_groups={r.lock_image_unlocked_groups}",
            f"model.force_quick_gelu={str(r.quick_gelu).lower()}"]
    theirs = (["--lock-image", "--lock-image-unlocked-groups", str(r.lock_image_unlocked_groups)] if r.lock_image else [])
    # open_clip 3.3.0's CLIP.lock_text_tower asserts freeze_layer_norm (ours sets it): without the
    # flag `open_clip_train --lock-text` stops with an AssertionError
    theirs += (["--lock-text", "--lock-text-freeze-layer-norm"] if r.lock_text else [])
    theirs += ["--force-quick-gelu"] if r.quick_gelu else []
    return ours, theirs


def _timeout(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.time()
    if left <= 0:
        raise TimeoutError("the check's deadline passed before this launch")
    return left


def _launch(arm: str, r: Recipe, args: list[str], env: dict, deadline: float | None, parse) -> dict:
    """Run one arm; its window is parsed first, so a launch that fails after its timed steps still
    counts (with a note); one that gave no window raises ChildFailed."""
    proc = train_bench.torchrun(r.nproc, args, env, timeout=_timeout(deadline), check=False)
    out = proc.stdout + proc.stderr
    try:
        w = parse(out)
    except (OSError, ValueError, KeyError) as e:
        raise ChildFailed(arm, f"exit {proc.returncode}, no timed window ({e})", out) from None
    if proc.returncode:
        w["note"] = f"exited {proc.returncode} after its timed window"
    return w


def run_ours(r: Recipe, shards: str, n: int, work: str, env: dict, deadline: float | None = None) -> dict:
    a = argparse.Namespace(model=r.model, nproc=r.nproc, workers=r.workers, batch=r.global_batch, steps=r.steps,
                           precision=r.precision, warmup=r.warmup, device=r.device)
    run_dir = tempfile.mkdtemp(dir=work, prefix="ours-")
    args = ["-m", "mcl_dist.bench.throughput", "--as-ours",
            *train_bench.ours_args(a, shards, n, run_dir, tuple(lock_overrides(r)[0]))]
    return _launch("ours", r, args, env, deadline,
                   lambda out: ours_window(run_dir, r.warmup, r.global_batch, r.timed_steps))


def run_open_clip(r: Recipe, shards: str, work: str, env: dict, deadline: float | None = None) -> dict:
    name, cfg_file = train_bench.model_args(r.model)
    auto = "amp_bf16" if r.device == "cuda" else "fp32"
    precision = {"auto": auto, "bf16": auto}.get(r.precision, r.precision)  # amp, amp_bf16, fp32: the same name
    args = ["-m", "mcl_dist.bench.throughput", "--as-open-clip-train", cfg_file, "--", "--train-data", shards,
            "--dataset-type", "webdataset", "--train-num-samples", str(r.steps * r.global_batch), "--epochs", "1",
            "--batch-size", str(r.batch_per_gpu), "--workers", str(r.workers), "--model", name, "--lr", "1e-3",
            "--wd", "0.2", "--warmup", "10", "--precision", precision, "--local-loss", "--gather-with-grad",
            "--log-every-n-steps", "1", "--logs", tempfile.mkdtemp(dir=work, prefix="oc-"), "--save-frequency", "0",
            "--report-to", "", "--seed", "0", "--device", r.device, *lock_overrides(r)[1]]
    return _launch("open_clip_train", r, args, env, deadline,
                   lambda out: open_clip_window(out, r.warmup, r.global_batch, r.timed_steps))


def _rounds_at(r: Recipe, shards: str, n: int, work: str, env: dict, n_rounds: int, peak, deadline) -> dict:
    arms = {"ours": [], "open_clip_train": []}
    for _ in range(n_rounds):
        for arm, fn in (("ours", lambda: run_ours(r, shards, n, work, env, deadline)),
                        ("open_clip_train", lambda: run_open_clip(r, shards, work, env, deadline))):
            if peak is None:
                arms[arm].append(fn())
                continue
            with peak() as mem:
                res = fn()
            arms[arm].append({**res, "peak_mem_gb": mem.gib})
    out = {"recipe": asdict(r), "rounds": n_rounds}
    for arm, runs in arms.items():
        out[arm] = {"samples_per_s": [x["samples_per_s"] for x in runs],
                    "data_wait_share": [x["data_wait_share"] for x in runs],
                    "timed_steps": [x["timed_steps"] for x in runs],
                    "peak_mem_gb": max((x.get("peak_mem_gb") or 0.0) for x in runs) or None,
                    "notes": [x["note"] for x in runs if x.get("note")]}
    out["ratio"] = ratio_stats(out["ours"]["samples_per_s"], out["open_clip_train"]["samples_per_s"])
    return out


def rounds(r: Recipe, shards: str, n: int, work: str, env: dict, n_rounds: int = 3, peak=None,
           deadline: float | None = None) -> dict:
    """Alternating rounds; `peak` (a context manager factory) measures each arm's memory;
    `deadline` (time.time()) kills a launch that would run past it. A launch that fails to
    allocate halves the per-GPU batch of both arms and starts the rounds again."""
    r.check()
    halved = []
    while True:
        try:
            out = _rounds_at(r, shards, n, work, env, n_rounds, peak, deadline)
            return {**out, "halved_from": halved}
        except ChildFailed as e:
            if not e.alloc or r.batch_per_gpu // 2 < MIN_BATCH:
                raise
            halved.append(r.batch_per_gpu)
            r = replace(r, batch_per_gpu=r.batch_per_gpu // 2)
            print(f"throughput: a trainer failed to allocate at {halved[-1]} per GPU; both arms again at "
                  f"{r.batch_per_gpu}", file=sys.stderr, flush=True)


class ModelOnly:
    """Our training step (engine, loss, optimizer) on tensors already on the device."""

    def __init__(self, r: Recipe, device: torch.device, config_file: str = ""):
        mcfg = ModelConfig(name=r.model, config_file=config_file, lock_image=r.lock_image,
                           lock_image_unlocked_groups=r.lock_image_unlocked_groups, lock_text=r.lock_text,
                           force_quick_gelu=r.quick_gelu)
        model = create(mcfg, device)["model"]
        tcfg = TrainConfig(precision=r.precision, lr=1e-3, wd=0.2, warmup_steps=10, grad_clip_norm=0.0)
        self.engine, self.device, self.batch = DDPEngine(model, tcfg, device, 10**6, 1e-3), device, r.batch_per_gpu
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        g = torch.Generator(device=device).manual_seed(0)
        self.image = torch.randn(self.batch, 3, size, size, device=device, generator=g)
        vocab = getattr(model, "vocab_size", 49408)
        self.text = torch.randint(1, vocab, (self.batch, model.context_length), device=device, generator=g)
        self.loss_fn = ClipLoss()

    def forward_loss(self) -> torch.Tensor:
        out = self.engine.forward(image=self.image, text=self.text)
        return self.loss_fn(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())

    def step(self) -> None:
        self.engine.backward(self.forward_loss())
        self.engine.step()

    def flops(self) -> dict:
        """FLOPs of one step as it runs; the gradients it leaves are cleared."""
        counted = step_flops(self.forward_loss)
        self.engine.optimizer.zero_grad(set_to_none=True)
        return {**counted, "per_sample": counted["total"] / self.batch}

    def rate(self, steps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            self.step()
        sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return steps * self.batch / (time.perf_counter() - t)


def _fused_adamw() -> None:
    """open_clip_train builds torch.optim.AdamW with the default implementation (foreach on
    CUDA); ours uses the fused one. Give open_clip_train the fused one too, so the comparison
    is of the trainers, not of two AdamW kernels."""
    base = torch.optim.AdamW

    class FusedAdamW(base):
        def __init__(self, params, *args, **kw):
            kw.setdefault("fused", True)
            super().__init__(params, *args, **kw)

    torch.optim.AdamW = FusedAdamW


class _TimedLoader:
    """open_clip_train's training loader with each `next()` timed and printed (rank 0), so its
    data wait is the time blocked on the loader, as ours is. Everything else is delegated."""

    def __init__(self, loader, printing: bool):
        self._loader, self._printing = loader, printing

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        it = iter(self._loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            if self._printing:
                print(f"mcl_bench data_wait_s {time.perf_counter() - t:.6f}", file=sys.stderr, flush=True)
            yield batch


def _open_clip_shims() -> None:
    """The open_clip_train child: fused AdamW, a timed loader, and no checkpoint (its final
    `epoch_1.pt` is written after the timed window and is never read)."""
    import open_clip_train.main as ocm

    _fused_adamw()
    get_data = ocm.get_data

    def timed_get_data(*args, **kw):
        data = get_data(*args, **kw)
        if "train" in data:
            data["train"].dataloader = _TimedLoader(data["train"].dataloader, int(os.environ.get("RANK", "0")) == 0)
        return data

    ocm.get_data = timed_get_data
    torch.save = lambda *args, **kw: None


def _ours_without_checkpoints(argv: list[str]) -> int:
    """Our launcher with no training checkpoints, stopping each rank after stage 0's last step
    (the stage checkpoint, integration and report come after the timed window)."""
    trained = StageTrainer.run

    def run_then_stop(self):
        trained(self)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    StageTrainer._save = lambda self, step: None
    StageTrainer.run = run_then_stop
    return pretrain.main(argv)


if __name__ == "__main__" and sys.argv[1:2] == ["--as-open-clip-train"]:
    _open_clip_shims()
    train_bench.as_open_clip_train(sys.argv[2:])
elif __name__ == "__main__" and sys.argv[1:2] == ["--as-ours"]:
    sys.exit(_ours_without_checkpoints(sys.argv[2:]))
