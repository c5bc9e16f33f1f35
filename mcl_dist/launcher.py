"""The `mcl-pretrain` command (also `launch/pretrain.py`): run, resume or plan a whole MCL run.

    torchrun --standalone --nproc_per_node N launch/pretrain.py --config FILE [--run-dir DIR] [key=value ...]
    mcl-pretrain --config FILE --dry-run [--world-size N] [--gpu h200] [key=value ...]
    launch/pretrain.py --config FILE --batch-size 32 --lr 1e-3 ...   (open_clip_train's flags: oc_flags.py)

Re-running the same command resumes where it stopped (see <run_dir>/manifest.json). Every
failure ends in one `error:` line from rank 0 and exit code 2 (3 when training stopped on
purpose), not a traceback (add --debug for it). On one node, `torchrun --standalone` picks a free
rendezvous port, so two runs at once never collide on torchrun's default port 29500.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from typing import Callable, Optional

from mcl_dist import oc_flags
from mcl_dist.config import ConfigError
from mcl_dist.config_load import load_config
from mcl_dist.dry_run import dry_run as plan
from mcl_dist.memory_estimate import GPUS
from mcl_dist.pipeline import run_pipeline
from mcl_dist.progress import close_bars
from mcl_dist.train import TrainingError


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    # root at WARNING: open_clip logs every model creation at INFO on the root logger
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("mcl_dist").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # open_clip warns once per model creation that no weights were loaded; that is expected here
    logging.getLogger().addFilter(lambda r: "No pretrained weights loaded" not in r.getMessage())


RANK0_GRACE_S = 30  # seconds another rank waits after an error for rank 0 to report it


def guarded(fn: Callable[[], Optional[int]], debug: bool = False) -> int:
    """Run `fn`; every failure becomes one 'error:' line from rank 0 and exit code 2 (3 when
    training stopped on purpose), not a traceback (`--debug` shows it). The other ranks stay quiet:
    their errors are the same ones (checks run on every rank) or follow from rank 0's."""
    try:
        return fn() or 0
    except TrainingError as e:
        _say(f"error: {e}")
        return 3
    except ConfigError as e:  # bad input, with the fix in the message
        _say(f"error: {e}")
        if debug:
            traceback.print_exc()
        return 2
    except Exception as e:  # a damaged file, a full disk, ...: the message names it
        _say(f"error: {type(e).__name__}: {e} (re-run with --debug for the traceback)")
        if debug:
            traceback.print_exc()
        return 2


def _say(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        close_bars()  # a progress bar left open would prefix the line
        print(line, file=sys.stderr, flush=True)
        return
    # kept in the rank's log, not as a second error line. Checks run on every rank, so rank 0 most
    # likely meets the same error: wait for it, or torchrun would stop rank 0 (SIGTERM) as soon as
    # this rank exits, before it prints. Wait first, then log: torchrun stops this rank when rank 0
    # exits, so the common case prints one line, never two glued together on the shared stderr.
    # A failure of this rank alone shows up after the wait.
    time.sleep(RANK0_GRACE_S)
    logging.getLogger("mcl_dist").warning("rank %s stopped: %s", os.environ.get("RANK"), line)


def launch(config: str, run_dir: Optional[str], overrides: list[str], dry_run: bool = False,
           world_size: Optional[int] = None, redo: str = "", gpu: Optional[str] = None, debug: bool = False) -> int:
    """What the command does, callable in-process (tests run it at world size 1)."""
    setup_logging()
    if dry_run:
        return guarded(lambda: plan(config, run_dir, overrides, world_size, gpu), debug)
    return guarded(lambda: run_pipeline(config, run_dir, overrides, redo=redo), debug)


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mcl-pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, steps, batch per rank, memory, paths) and exit; writes nothing")
    p.add_argument("--world-size", type=int, default=None,
                   help="with --dry-run: plan for this many ranks (default: torchrun's WORLD_SIZE or 1)")
    p.add_argument("--gpu", choices=sorted(GPUS), default=None,
                   help="with --dry-run: warn when a stage's memory estimate exceeds this GPU's (default: a100-80gb)")
    p.add_argument("--redo", default="", metavar="STEP",
                   help="recompute STEP (e.g. stage_1/kmeans) and every step after it")
    p.add_argument("--debug", action="store_true", help="on failure, print the traceback after the error line")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 stages.1.k=64")
    oc_flags.add_arguments(p)
    args, extra = p.parse_known_args(argv)
    args.unknown = extra
    return args


def resolve(args: argparse.Namespace) -> tuple[Optional[str], list[str]]:
    """(run directory, overrides) once open_clip_train's flags are mapped; prints what they set."""
    oc_flags.refuse_unknown(args.unknown)
    args.overrides += [a for a in args.unknown if "=" in a and not a.startswith("-")]  # key=value after a flag
    if args.unknown and not all("=" in a and not a.startswith("-") for a in args.unknown):
        raise ConfigError(f"command line: unexpected argument(s) {' '.join(args.unknown)}")
    world = args.world_size if args.dry_run and args.world_size else int(os.environ.get("WORLD_SIZE", "1"))
    flags, told = oc_flags.to_overrides(args, world, lambda: load_config(args.config, args.overrides).train.accum_freq)
    if told and os.environ.get("RANK", "0") == "0":
        print("open_clip_train flags: " + "; ".join(told), flush=True)
    return oc_flags.run_dir(args, args.config), flags + args.overrides


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    resolved: list = []  # (run directory, overrides); a bad flag is one `error:` line from rank 0 like any failure
    code = guarded(lambda: resolved.extend(resolve(args)), args.debug)
    if code:
        return code
    run_dir, overrides = resolved
    return launch(args.config, run_dir, overrides, dry_run=args.dry_run, world_size=args.world_size,
                  redo=args.redo, gpu=args.gpu, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
