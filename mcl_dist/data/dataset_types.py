"""`data.dataset_type`: the training data's sources, one switch point (open_clip's
`get_dataset_fn`). Each entry is a data/dataset.py `TrainData` class with `check(cfg, where)`
(its settings, when the config loads) and `from_config(cfg)`. A new source is one module plus
its line here. `auto` picks by the file named: a `.csv` / `.tsv` file is a CSV, anything else
webdataset shards.
"""
from __future__ import annotations

from mcl_dist.config.schema import Config
from mcl_dist.data.csv_data import CsvData
from mcl_dist.data.dataset import TrainData
from mcl_dist.data.webdataset_data import WebDatasetData

DATASET_TYPES = {cls.kind: cls for cls in (WebDatasetData, CsvData)}
CSV_SUFFIXES = (".csv", ".tsv")


def resolve_type(cfg: Config) -> str:
    """The source a config reads: data.dataset_type, or for `auto` the one its file suffix names."""
    if cfg.data.dataset_type != "auto":
        return cfg.data.dataset_type
    return "csv" if cfg.data.train_shards.strip().lower().endswith(CSV_SUFFIXES) else "webdataset"


class AutoType:
    """`auto`: checked as the source it resolves to."""

    @staticmethod
    def check(cfg: Config, where: str) -> None:
        DATASET_TYPES[resolve_type(cfg)].check(cfg, where)


CHOICES = {**DATASET_TYPES, "auto": AutoType}  # what data.dataset_type accepts (config/choices.py)


def open_data(cfg: Config) -> TrainData:
    """The run's training data (the shard list expanded, the CSV read and checked)."""
    return DATASET_TYPES[resolve_type(cfg)].from_config(cfg)
