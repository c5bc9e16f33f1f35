"""Shared entry-point plumbing: logging, config errors as clean messages, exit codes."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional

from mcl_dist.config import ConfigError


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    # root at WARNING: open_clip logs every model creation at INFO on the root logger
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("mcl_dist").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # open_clip warns once per model creation that no weights were loaded; that is expected here
    logging.getLogger().addFilter(lambda r: "No pretrained weights loaded" not in r.getMessage())


def guarded(fn: Callable[[], Optional[int]]) -> int:
    """Run `fn`; bad input becomes one 'error:' line and exit code 2, not a traceback."""
    from mcl_dist.train import TrainingError

    try:
        return fn() or 0
    except (ConfigError, FileNotFoundError) as e:
        # an error every rank raises alike (data checks, a busy run directory) is printed once
        if not (getattr(e, "all_ranks", False) and os.environ.get("RANK", "0") != "0"):
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


def main(config: str, run_dir: Optional[str], overrides: list[str], dry_run: bool = False,
         world_size: Optional[int] = None, redo: str = "") -> int:
    setup_logging()

    def run() -> int:
        if dry_run:
            from mcl_dist.dry_run import dry_run as plan

            return plan(config, run_dir, overrides, world_size)
        from mcl_dist.pipeline import run_pipeline

        return run_pipeline(config, run_dir, overrides, redo=redo)

    return guarded(run)
