"""Data sources the trainer draws micro-batches from, with the state a checkpoint keeps.

- `StreamSource`: stage 0, sequential streaming of the data's units (infinite, seeded, resumable).
- `PlannedSource`: stages >= 1, the cluster-bucketed plan read through the data's random access
  (`IndexedDataset`, a map-style dataset over a `ShardIndex` or a CSV's rows).

Every batch carries `meta`, the skip counts `BadSampleMonitor` sums. A stream also reports its
worker's raw position and the shards the bad samples came from; a planned batch knows only how
many of its samples failed to decode, so its `meta` holds just that.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from mcl_dist.data.decode import collate
from mcl_dist.data.preflight import DataError
from mcl_dist.data.sampler import EpochPlan, PlannedBatchSampler, plan_epoch
from mcl_dist.data.streaming import ShardStream, make_loader, stable_seed
from mcl_dist.data.tar_index import ShardIndex

log = logging.getLogger(__name__)


class StreamSource:
    def __init__(self, urls: Sequence, decode, *, micro_batch: int, rank: int, world: int, seed: int,
                 shuffle_buffer: int, workers: int, read: Optional[Callable] = None):
        self.urls, self.decode, self.read = urls, decode, read  # read: the data's reader (ShardStream)
        self.micro_batch, self.rank, self.world, self.seed = micro_batch, rank, world, seed
        self.shuffle_buffer, self.workers = shuffle_buffer, workers
        self.micro = 0  # micro-batches handed out (the DataLoader's round-robin counter)
        self.positions: dict[int, int] = {}

    def batches(self, state: Optional[dict] = None) -> Iterator[dict[str, Any]]:
        if state:
            _check_workers(state, max(1, self.workers))
            self.micro = int(state["micro"])
            self.positions = {int(k): int(v) for k, v in state["positions"].items()}
        n = max(1, self.workers)
        stream = ShardStream(self.urls, self.decode, batch_size=self.micro_batch, rank=self.rank,
                             world=self.world, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                             infinite=True, start_positions=self.positions, rotate=self.micro % n, read=self.read)
        for batch in make_loader(stream, self.workers):
            meta = batch["meta"]
            self.positions[meta["worker"]] = meta["raw_pos"]
            if batch["key"]:
                self.micro += 1
            yield batch

    def state(self) -> dict:
        return {"micro": self.micro, "positions": {str(k): v for k, v in self.positions.items()},
                "workers": max(1, self.workers)}


def _check_workers(state: dict, workers: int) -> None:
    """A stream's order depends on its loader workers (each reads its own shards through its own
    shuffle buffer), and the saved positions are per worker: resuming with another worker count
    would read other samples than the uninterrupted run, so it is refused."""
    was = int(state.get("workers", workers))  # checkpoints from before this check carry none
    if was != workers:
        raise DataError(f"stage 0 was interrupted with {was} data loader worker{'s' if was != 1 else ''} per rank "
                        f"and would resume with {workers}: its checkpoint holds each worker's place in the "
                        f"stream, so resuming would read other samples than an uninterrupted run. Resume with "
                        f"data.workers={was}, or add --redo stage_0/train to train stage 0 afresh")


class IndexedDataset(Dataset):
    """Items are a sample index or the `(sample_index, label, group[, epoch])` tuples the batch
    sampler yields; each comes back as `(decoded, sample_index, label, group[, epoch])`, so the
    trainer builds the label mask and logs the batch plan from what was actually read. An item's
    epoch is passed to the decode (`SeededDecode` seeds its augmentation with it). A sample whose decode raises
    comes back with `decoded=None`: `collate_skip_bad` drops and counts it, so one bad image costs
    one sample, not the run (the trainer applies the bad-share threshold)."""

    max_logged = 5  # bad samples logged in full per process; the rest are only counted

    def __init__(self, index: ShardIndex, decode: Callable[[dict], Any]):
        self.index, self.decode = index, decode
        self._logged = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item) -> tuple:
        if isinstance(item, (tuple, list)):
            i, label, group, *epoch = (int(v) for v in item)
        else:
            i, label, group, epoch = int(item), -1, -1, []
        # read errors (file gone or changed) are not bad samples: they propagate and stop the run
        raw = self.index.read_sample(i)
        try:
            decoded = self.decode(raw, *epoch)
        except Exception as e:  # a bad sample: corrupt image, missing caption, ...
            if self._logged < self.max_logged:
                self._logged += 1
                log.warning("bad sample %s in %s: %s: %s", raw["__key__"], raw["__url__"], type(e).__name__, e)
            decoded = None
        return (decoded, i, label, group, *epoch)


def collate_skip_bad(batch: list, inner_collate: Optional[Callable[[list], Any]] = None) -> tuple[Any, int]:
    """Drop items whose decode failed; `inner_collate` gets the remaining tuples.

    Returns (collated batch or None when every item was bad, number of bad items). Use with a
    DataLoader as `collate_fn=functools.partial(collate_skip_bad, inner_collate=fn)` (picklable).
    """
    good = [b for b in batch if b[0] is not None]
    n_bad = len(batch) - len(good)
    if not good:
        return None, n_bad
    return (inner_collate or default_collate)(good), n_bad


def collate_planned(items: list) -> dict[str, Any]:
    """IndexedDataset items (decoded or None, index, label, group, epoch) -> a batch; bad ones
    dropped. The epoch (one per micro-batch) tells the source where the stream of batches is."""
    batch, bad = collate_skip_bad(items, inner_collate=_collate_labelled)
    batch = batch or {"key": []}
    batch["meta"] = {"bad": bad, "reasons": {"unreadable": bad} if bad else {}}
    batch["epoch"] = items[0][4]
    return batch


def _collate_labelled(good: list) -> dict[str, Any]:
    batch = collate([it[0] for it in good])
    batch["labels"] = torch.tensor([it[2] for it in good], dtype=torch.long)
    batch["groups"] = torch.tensor([it[3] for it in good], dtype=torch.long)
    return batch


class SeededDecode:
    """Augmentation seeded by (seed, epoch, key): the same sample gets the same crop on resume,
    whichever worker decodes it."""

    def __init__(self, decode, seed: int):
        self.decode, self.seed = decode, seed

    def __call__(self, raw: dict, epoch: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds CUDA and costs ~0.2 ms a call
            torch.default_generator.manual_seed(stable_seed(self.seed, epoch, raw["__key__"]))
            return self.decode(raw)


class StageBatches:
    """A planned stage's batch sampler: epoch after epoch of one rank's planned micro-batches from
    (epoch, step) on, each item tagged with its epoch. One DataLoader reads the whole stage, so its
    workers run on across epochs: a loader per epoch restarted them and drained the prefetch queue
    (1.1 s a 32-step epoch with 8 workers on an H200 node)."""

    def __init__(self, source: "PlannedSource", epoch: int, step: int):
        self.source, self.epoch, self.step = source, epoch, step

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        epoch, step = self.epoch, self.step
        while True:
            plan = self.source.plan(epoch)
            if plan.num_steps == 0:  # epoch 0 is checked before training; a later plan could differ
                raise RuntimeError(f"the cluster plan of epoch {epoch} has no full step ({plan.stats})")
            for batch in PlannedBatchSampler(plan, rank=self.source.rank, start_step=step):
                yield [(*item, epoch) for item in batch]
            epoch, step = epoch + 1, 0


class PlannedSource:
    """Stages >= 1: micro-batches planned by the cluster-bucketed sampler, read via the tar index."""

    def __init__(self, index, labels, decode, *, micro_batch: int, accum: int, world: int, rank: int,
                 group_size: int, seed: int, workers: int):
        self.index, self.labels, self.decode = index, labels, decode
        self.micro_batch, self.accum, self.world, self.rank = micro_batch, accum, world, rank
        self.group_size, self.seed, self.workers = group_size, seed, workers
        self.epoch, self.step = 0, 0
        self._plan: Optional[tuple[int, EpochPlan]] = None  # the last plan made, with its epoch

    def plan(self, epoch: int) -> EpochPlan:
        """Epoch `epoch`'s plan. The last one is kept: the stage's set-up plans epoch 0 for its
        checks and step count, and the batches then read the same plan (seconds for CC12M)."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, plan_epoch(self.labels, epoch=epoch, seed=self.seed, world_size=self.world,
                                            micro_batch=self.micro_batch, accum=self.accum,
                                            group_size=self.group_size))
        return self._plan[1]

    def batches(self, state: Optional[dict] = None) -> Iterator[dict[str, Any]]:
        if state:
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
        dataset = IndexedDataset(self.index, SeededDecode(self.decode, self.seed))
        loader = DataLoader(dataset, batch_sampler=StageBatches(self, self.epoch, self.step), num_workers=self.workers,
                            collate_fn=collate_planned, prefetch_factor=4 if self.workers else None)
        micro = 0  # micro-batches of the current step handed out
        for batch in loader:
            if batch["epoch"] != self.epoch:  # steps start at a plan's step boundary
                self.epoch, self.step, micro = batch["epoch"], 0, 0
            micro += 1
            if micro == self.accum:
                self.step, micro = self.step + 1, 0
            yield batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}
