"""Map-style dataset over a ShardIndex: stages >= 1 read exactly the samples the sampler plans.

Items are either a sample index or the `(sample_index, label, group)` tuples the cluster-bucketed
batch sampler yields; every item comes back as `(decoded, sample_index, label, group)` so the
trainer can build the label mask and log the batch plan from what was actually read. A sample
whose decode raises comes back with `decoded=None`: `collate_skip_bad` drops and counts those,
so one bad image costs one sample, not the run (the trainer applies the bad-share threshold).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from torch.utils.data import Dataset, default_collate

from mcl_dist.data.tar_index import ShardIndex

log = logging.getLogger(__name__)


class IndexedDataset(Dataset):
    max_logged = 5  # bad samples logged in full per process; the rest are only counted

    def __init__(self, index: ShardIndex, decode: Callable[[dict], Any]):
        self.index, self.decode = index, decode
        self._logged = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item) -> tuple[Any, int, int, int]:
        if isinstance(item, (tuple, list)):
            i, label, group = (int(v) for v in item)
        else:
            i, label, group = int(item), -1, -1
        # read errors (file gone or changed) are not bad samples: they propagate and stop the run
        raw = self.index.read_sample(i)
        try:
            decoded = self.decode(raw)
        except Exception as e:  # a bad sample: corrupt image, missing caption, ...
            if self._logged < self.max_logged:
                self._logged += 1
                log.warning("bad sample %s in %s: %s: %s", raw["__key__"], raw["__url__"], type(e).__name__, e)
            decoded = None
        return decoded, i, label, group


def collate_skip_bad(batch: list, inner_collate: Optional[Callable[[list], Any]] = None) -> tuple[Any, int]:
    """Drop items whose decode failed; `inner_collate` gets the remaining 4-tuples.

    Returns (collated batch or None when every item was bad, number of bad items). Use with a
    DataLoader as `collate_fn=functools.partial(collate_skip_bad, inner_collate=fn)` (picklable).
    """
    good = [b for b in batch if b[0] is not None]
    n_bad = len(batch) - len(good)
    if not good:
        return None, n_bad
    return (inner_collate or default_collate)(good), n_bad
