"""`data.dataset_type: webdataset`: tar shards as img2dataset writes them, local or remote
(`pipe:`, `s3://`, anything webdataset opens) for stage 0; stages >= 1 read local shards
through the tar index (tar_index.py). The interface is data/dataset.py's `TrainData`."""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

from mcl_dist.config.origins import blame
from mcl_dist.config.schema import Config
from mcl_dist.data.dataset import TrainData
from mcl_dist.data.preflight import check_index, check_remote_shards, check_shard_count
from mcl_dist.data.shards import count_samples, expand_urls, is_local, local_path
from mcl_dist.data.streaming import ErrorLog, raw_samples
from mcl_dist.data.tar_index import build_or_load_index


def data_identity(urls: list[str]) -> list:
    """Shard names plus size and mtime where local: a rewritten shard changes the fingerprint."""
    out = []
    for u in urls:
        if is_local(u):
            st = os.stat(local_path(u))
            out.append([os.path.abspath(local_path(u)), st.st_size, st.st_mtime_ns])
        else:
            out.append([u])
    return out


def count_from_stats(urls: list[str]) -> int | None:
    """img2dataset writes `<shard>_stats.json` beside each tar; its `successes` is the shard's
    sample count, so a dry run over millions of samples need not read the tars."""
    total = 0
    for url in urls:
        path = os.path.splitext(local_path(url))[0] + "_stats.json"
        if not is_local(url) or not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                total += int(json.load(f)["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total


class WebDatasetData(TrainData):
    kind, unit = "webdataset", "shard"

    def __init__(self, spec: str):
        self.units = expand_urls(spec)  # local shards must exist

    @staticmethod
    def check(cfg: Config, where: str) -> None:
        check_remote_shards(cfg.data.train_shards, len(cfg.stages), blame(where, "data.train_shards"))

    @classmethod
    def from_config(cls, cfg: Config) -> "WebDatasetData":
        return cls(cfg.data.train_shards)

    def read(self, units: Sequence, errors: ErrorLog) -> Iterator[dict]:
        return raw_samples(list(units), errors)

    def identity(self) -> dict:
        # unchanged since before the data-source interface: earlier runs keep their fingerprints
        return {"shards": data_identity(self.units)}

    def num_samples(self) -> int:
        return count_samples(self.units)

    def plan(self) -> dict[str, Any]:
        stats = count_from_stats(self.units)
        if stats is not None:
            return {"units": len(self.units), "samples": stats, "source": "img2dataset *_stats.json"}
        return {"units": len(self.units), "samples": count_samples(self.units), "source": "tar headers"}

    def can_index(self) -> bool:
        return all(is_local(u) for u in self.units)  # remote shards: streaming counts their bad samples

    def index(self, cache_dir: str, progress: bool = False):
        return build_or_load_index([local_path(u) for u in self.units], cache_dir, progress=progress)

    def check_samples(self, index, data_cfg, need_caption: bool) -> dict:
        d = data_cfg
        return check_index(index, image_exts=d.image_ext, caption_ext=d.caption_ext, need_caption=need_caption,
                           max_member_bytes=d.max_member_bytes, max_bad_fraction=d.max_bad_fraction)

    def check_world(self, world: int, stage0_trains: bool) -> None:
        check_shard_count(len(self.units), world, stage0_trains)
