"""The training data of a run behind one interface, whatever stores it (webdataset tars, a CSV of
image files): every step reads the data through a `TrainData`, never through its storage.

What each part of a run needs, and which method gives it:

- stage 0 streams `units` (shards, CSV rows), dealt afresh every pass to ranks and loader
  workers, each unit read with `read(units, errors)` (streaming.py ShardStream): every sample
  once per pass over the data;
- the embedding gives rank r the units r, r+W, ... (`embed_share`): every sample once;
- stages >= 1 draw the batches the planner makes by sample position: `index()` gives random
  access (`keys`, `key_to_index`, `read_sample`, `fingerprint`, `len`);
- the evaluation's probe and the integrate step's CKA read the first samples (`read(units)`);
- the run's data fingerprint hashes `identity()`; the data check (`check_samples`) runs before any step.

Each source also has two class methods, `check(cfg, where)` (its settings, when the config
loads: a registry entry's check) and `from_config(cfg)`.

A raw sample has webdataset's shape, `{"__key__", "__url__", ext: bytes}` (a Mapping): the
decoders (decode.py) read nothing else, so a source only has to produce that.
mcl_dist/data/dataset_types.py registers the sources by `data.dataset_type`.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from mcl_dist.data.streaming import ErrorLog


class TrainData:
    """One training data set. Subclasses set `units` and implement the methods below."""

    kind = ""  # its data.dataset_type
    unit = "shard"  # what one of `units` is, for messages
    units: Sequence

    def read(self, units: Sequence, errors: ErrorLog) -> Iterator[dict]:
        """Raw samples of `units`, in order; damage that loses samples is counted into `errors`."""
        raise NotImplementedError

    def raw_samples(self, errors: ErrorLog) -> Iterator[dict]:
        """Every raw sample, in order (the probe's and the CKA's first samples)."""
        return self.read(self.units, errors)

    def embed_share(self, rank: int, world: int) -> Sequence:
        """The units rank `rank` embeds: together the ranks' shares hold every unit once."""
        return self.units[rank::world]

    def identity(self) -> dict:
        """What the run's data fingerprint hashes: it changes when the data changes."""
        raise NotImplementedError

    def num_samples(self) -> int:
        """Samples in one pass (data.num_samples, when set, wins over it)."""
        raise NotImplementedError

    def plan(self) -> dict[str, Any]:
        """For the dry run: {"units", "samples", "source"} without reading more than it must."""
        raise NotImplementedError

    def can_index(self) -> bool:
        """Whether `index` can give random access (the data check reads through it)."""
        return True

    def index(self, cache_dir: str, progress: bool = False):
        """Random access by sample position; built (and cached under cache_dir) on first use."""
        raise NotImplementedError

    def check_samples(self, index, data_cfg, need_caption: bool) -> dict:
        """The data check before any step: counts of unusable samples, a DataError when too many."""
        raise NotImplementedError

    def check_world(self, world: int, stage0_trains: bool) -> None:
        """Refuse a world that leaves a rank without data in stage 0 (it deals whole units)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A few words for the run's log line."""
        n = len(self.units)
        return f"{n} {self.unit}{'s' if n != 1 else ''}"
