"""Sequential streaming for stage 0 training and for embedding (`raw_samples`, the tar reader
underneath, also reads the evaluation's labelled shards).

Each (rank, DataLoader worker) pair reads its own slice of the shard list (or of any data's
units: a CSV's rows, read by the `read` the data gives, data/dataset.py). Bad samples
(corrupt images, missing captions, truncated tars) are skipped; every batch carries the number
skipped since the previous batch of the same worker, so the trainer can count them without any
shared state between worker processes.

Training streams are infinite: pass p over the data shuffles the shard list with (seed, p) and
deals shards to (rank, worker). A batch also carries its worker's raw position (samples read so
far), which is all a checkpoint needs to resume the stream exactly: on restart each worker
replays its shuffled stream and skips that many raw samples without decoding them.
"""
from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import tariterators

from mcl_dist.core import distributed as dist_utils
from mcl_dist.data.decode import BadSample, collate


class ErrorLog:
    """webdataset exception handler that counts instead of raising: damaged members per shard
    (`damaged`, which readers may clear) and every shard that broke, in order (`broken`)."""

    def __init__(self) -> None:
        self.damaged: Counter = Counter()
        self.broken: list[str] = []

    def __call__(self, exn: Exception) -> bool:
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and (".tar" in a or "/" in a)), "?")
        named = re.search(r"name='([^']+)'", url)  # "unexpected end of data @ <_io.BufferedReader name='x.tar'>"
        url = named.group(1) if named else url
        self.damaged[str(url)] += 1
        self.broken.append(str(url))
        return True  # skip and continue with the next member or shard


def raw_samples(urls: list[str], errors: ErrorLog) -> Iterator[dict]:
    """Raw samples (dict of ext -> bytes, plus __key__ and __url__) from tar shards in order; the
    project's one sequential tar reader (training, embedding, and the eval's labelled shards).

    The sample in progress when its tar broke is dropped, as the tar index drops it
    (tar_index.scan_tar): it may lack members, and the pre-training check already counts it among
    the tar's lost samples, so no step decodes it into a second count (`missing_image`)."""
    opened = tariterators.url_opener(({"url": u} for u in urls), handler=errors)
    files = tariterators.tar_file_expander(opened, handler=errors)
    known = len(errors.broken)
    for sample in tariterators.group_by_keys(files, handler=errors):
        if len(errors.broken) > known:  # a tar broke while this sample was being read
            broke, known = errors.broken[known:], len(errors.broken)
            if sample.get("__url__") in broke:
                continue
        yield sample


def shuffled(stream: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """A seeded shuffle buffer (webdataset's has no seed we control across restarts)."""
    buf: list[dict] = []
    for item in stream:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(len(buf))
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def worker_shards(urls: list[str], rank: int, world: int, worker: int, workers: int,
                  seed: Optional[int], epoch: int) -> list[str]:
    """The shards of (rank, worker) for one pass; seed None keeps the given order (embedding)."""
    order = np.arange(len(urls))
    if seed is not None:
        order = np.random.default_rng([seed, epoch]).permutation(len(urls))
    mine = order[rank::world][worker::workers]
    return urls[mine] if isinstance(urls, np.ndarray) else [urls[i] for i in mine]


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process and Python run (unlike hash())."""
    return zlib.crc32("-".join(map(str, parts)).encode()) & 0x7FFFFFFF


class ShardStream(IterableDataset):
    """Batches of decoded samples for one rank; see the module docstring for the contract."""

    def __init__(self, urls: Sequence, decode: Callable[[dict], dict], *, batch_size: int, rank: int,
                 world: int, seed: Optional[int], shuffle_buffer: int = 1000, infinite: bool = True,
                 start_positions: Optional[dict[int, int]] = None, rotate: int = 0,
                 read: Optional[Callable[[Sequence, ErrorLog], Iterator[dict]]] = None):
        """`urls`: the units dealt to ranks and workers, tar shards unless `read` (the data's
        reader, data/dataset.py TrainData.read) says how to read them."""
        self.urls, self.decode, self.batch_size = urls, decode, batch_size
        self.read = read or raw_samples
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle_buffer, self.infinite = shuffle_buffer, infinite
        self.start_positions = dict(start_positions or {})
        self.rotate = rotate

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        wid = info.id if info else 0
        # after a resume the loader starts at worker 0, but the next batch is due from worker
        # `rotate`; renaming workers keeps the batch order of the uninterrupted run
        return (wid + self.rotate) % workers, workers

    def _raw(self, logical: int, workers: int, errors: ErrorLog) -> Iterator[Optional[dict]]:
        """Raw samples pass after pass; None marks the end of each pass."""
        epoch = 0
        while True:
            shards = worker_shards(self.urls, self.rank, self.world, logical, workers, self.seed, epoch)
            stream = self.read(shards, errors)
            if self.seed is not None:
                rng = random.Random(f"{self.seed}-{self.rank}-{logical}-{epoch}")
                stream = shuffled(stream, self.shuffle_buffer, rng)
            yield from stream
            yield None
            epoch += 1
            if not self.infinite or not len(shards):
                return

    def __iter__(self) -> Iterator[dict[str, Any]]:
        logical, workers = self._worker()
        errors = ErrorLog()
        skip = self.start_positions.get(logical, 0)
        pos, bad, reasons, shards_bad = 0, 0, Counter(), Counter()
        samples: list[dict] = []
        good_in_pass, pass_start = 0, 0
        for raw in self._raw(logical, workers, errors):
            if raw is None:  # end of a pass over this worker's shards
                if good_in_pass == 0 and pass_start >= skip:
                    # nothing readable in a whole pass: another pass would read the same bad
                    # samples forever (100% CPU, no batch); hand the counts over and stop
                    yield self._batch([], logical, pos, bad, reasons, shards_bad, errors, exhausted=True)
                    return
                good_in_pass, pass_start = 0, pos
                continue
            pos += 1
            if pos <= skip:
                continue  # replayed for an exact resume; never decoded
            try:
                samples.append(self._decode(raw, logical, pos))
                good_in_pass += 1
            except BadSample as e:
                bad += 1
                reasons[e.reason] += 1
                shards_bad[raw.get("__url__", "?")] += 1
            if len(samples) == self.batch_size:
                yield self._batch(samples, logical, pos, bad, reasons, shards_bad, errors)
                samples, bad, reasons, shards_bad = [], 0, Counter(), Counter()
        if samples and not self.infinite:
            yield self._batch(samples, logical, pos, bad, reasons, shards_bad, errors)
        elif bad or errors.damaged:  # report what was skipped after the last full batch
            yield self._batch([], logical, pos, bad, reasons, shards_bad, errors)

    def _decode(self, raw: dict, logical: int, pos: int) -> dict:
        """Seed the augmentation from the sample's place in the stream, not from the worker's
        history, so a resumed run (which skips samples undecoded) augments them identically."""
        if self.seed is None:
            return self.decode(raw)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds CUDA and costs ~0.2 ms a call
            torch.default_generator.manual_seed(stable_seed(self.seed, self.rank, logical, pos))
            return self.decode(raw)

    @staticmethod
    def _batch(samples, logical, pos, bad, reasons, shards_bad, errors, exhausted=False) -> dict[str, Any]:
        batch = collate(samples) if samples else {"key": []}
        damaged = dict(errors.damaged)
        errors.damaged.clear()
        batch["meta"] = {"worker": logical, "raw_pos": pos, "bad": bad, "reasons": dict(reasons),
                         "bad_shards": dict(shards_bad), "damaged_shards": damaged, "exhausted": exhausted}
        return batch


def make_loader(stream: ShardStream, workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                      prefetch_factor=4 if workers else None, pin_memory=torch.cuda.is_available())


def cap_workers(n_urls: int, world: int, workers: int) -> int:
    """Every worker of every rank needs at least one shard, or it would yield nothing."""
    return max(0, min(workers, n_urls // world)) if n_urls >= world else 0


class BadSampleMonitor:
    """Accumulates skipped-sample counts and stops the run above the configured share."""

    def __init__(self, max_fraction: float, min_seen: int = 200):
        self.max_fraction, self.min_seen = max_fraction, min_seen
        self.seen, self.bad, self.lost = 0, 0, 0
        self.reasons: Counter = Counter()
        self.shards: Counter = Counter()
        self.damaged: Counter = Counter()

    def update(self, meta: dict, n_good: int) -> None:
        """Add one batch's `meta`: `bad` and `reasons` always; `bad_shards` and `damaged_shards`
        only from a tar stream (a planned batch reads by index and has no damaged tars to report).

        `seen` and `bad` are samples this step read (so `seen` - `bad` is what it used); members
        lost to damaged tars are `lost`, apart: the pre-training check counts those samples, and
        they count only towards data.max_bad_fraction here (remote shards have no such check)."""
        bad_shards, damaged = meta.get("bad_shards", {}), meta.get("damaged_shards", {})
        self.seen += n_good + meta["bad"]
        self.bad += meta["bad"]
        self.lost += sum(damaged.values())
        self.reasons.update(meta["reasons"])
        self.shards.update(bad_shards)
        self.damaged.update(damaged)

    def merge(self, totals: list[dict]) -> dict:
        """Sum the per-rank summaries (from all_gather_object)."""
        out = {"seen": 0, "bad": 0, "lost": 0, "reasons": Counter(), "shards": Counter(), "damaged": Counter()}
        for t in totals:
            for k in ("seen", "bad", "lost"):
                out[k] += t.get(k, 0)
            for k in ("reasons", "shards", "damaged"):
                out[k].update(t[k])
        return out

    def restore(self, summary: Optional[dict]) -> None:
        """Continue the counts a checkpoint kept (`summary()` of the interrupted run)."""
        if summary:
            self.seen, self.bad, self.lost = (int(summary.get(k, 0)) for k in ("seen", "bad", "lost"))
            for k in ("reasons", "shards", "damaged"):
                setattr(self, k, Counter(summary.get(k, {})))

    def summary(self) -> dict:
        return {"seen": self.seen, "bad": self.bad, "lost": self.lost, "reasons": dict(self.reasons),
                "shards": dict(self.shards), "damaged": dict(self.damaged)}

    def no_sample_message(self, shards: int, of: int) -> str:
        """Why a rank's stream ended: one pass over its `shards` (of `of`) gave no usable sample."""
        reasons = ", ".join(f"{r} {n}" for r, n in self.reasons.most_common()) or "the shards are empty"
        damaged = f"; damaged tars: {', '.join(sorted(self.damaged))}" if self.damaged else ""
        return (f"no readable sample in {shards} shard{'s' if shards != 1 else ''} (rank {dist_utils.rank()}'s "
                f"share of {of}: {reasons}{damaged}); check data.image_ext / data.caption_ext "
                f"against the members of the shards")

    def check(self, total: dict, counts_only: bool = False) -> Optional[str]:
        """A message when the share of bad samples (lost members included) is too high, else None."""
        bad, seen = total["bad"] + total.get("lost", 0), total["seen"] + total.get("lost", 0)
        if seen < self.min_seen or bad <= self.max_fraction * seen:
            return None
        if counts_only:
            return "over the limit"
        worst = total["shards"].most_common(3) or total["damaged"].most_common(3)
        named = ", ".join(f"{s} ({n})" for s, n in worst)
        return (f"{bad} of {seen} samples were unreadable "
                f"({100 * bad / seen:.1f}% > data.max_bad_fraction="
                f"{100 * self.max_fraction:.1f}%); reasons {dict(total['reasons'])}; worst shards: {named}")
