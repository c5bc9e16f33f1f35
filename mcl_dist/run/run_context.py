"""What a step body may know about its run (mcl_dist/steps/): the config, the run directory, this
rank, the training data (data/dataset.py `TrainData`) with its fingerprint and random access (the
tar index, the CSV's rows), and the manifest's records, read-only.

Step bodies take a `RunContext`, never the orchestrator (mcl_dist/pipeline/runner.py), so a step cannot
reach back into the step list or the manifest's bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from mcl_dist.config.schema import Config
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core.distributed import DistInfo
from mcl_dist.data.dataset import TrainData
from mcl_dist.core.layout import integrated_path, stage_dir  # noqa: F401 (steps and tests import them from here)
from mcl_dist.core.layout import index_dir as _index_dir
from mcl_dist.run.manifest import Manifest


def index_dir(cfg: Config, run_dir: str) -> str:
    """The tar index cache: data.index_dir, else <run_dir>/index."""
    return _index_dir(run_dir, cfg.data.index_dir)


@dataclass
class RunContext:
    cfg: Config
    run_dir: str
    info: DistInfo = field(default_factory=DistInfo)
    data: Optional[TrainData] = None  # the training data (data.dataset_type)
    data_fp: str = ""  # fingerprint of the data (shards: names, sizes, mtimes; a CSV: its bytes, image sizes)

    def stage_dir(self, s: int) -> str:
        return stage_dir(self.run_dir, s)

    @property
    def index_dir(self) -> str:
        return index_dir(self.cfg, self.run_dir)

    def load_index(self, progress: bool = False):
        """The data's random access (a tar index is cached, built on first use); rank 0 alone, or
        after shard_index."""
        return self.data.index(self.index_dir, progress=progress)

    def shard_index(self, step: str):
        """Rank 0 builds (or validates) the cached tar index first, the others wait outside any
        collective (a long build must not run into dist.timeout_min), then load it."""
        built: dict = {}

        def build() -> bool:
            built["index"] = self.data.index(self.index_dir)
            return True

        dist_utils.run_on_main(f"index-{step}", build)
        return built["index"] if built else self.load_index()

    def kill_step(self, step: str) -> int:
        """debug.kill_at="stage_1/train:3" -> 3 for that step, else 0 (tests)."""
        name, _, at = self.cfg.debug.kill_at.partition(":")
        return int(at) if name == step and at.isdigit() else 0

    def record(self, step: str) -> Optional[dict[str, Any]]:
        """The manifest's record of an earlier step (read-only)."""
        return Manifest(self.run_dir).step(step)
