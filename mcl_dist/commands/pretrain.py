"""The `mcl-pretrain` command (also `launch/pretrain.py`): run, resume or plan a whole MCL run.

    torchrun --standalone --nproc_per_node N launch/pretrain.py --config FILE [--run-dir DIR] [key=value ...]
    mcl-pretrain --config FILE --dry-run [--world-size N] [--gpu h200] [key=value ...]
    launch/pretrain.py --config FILE --batch-size 32 --lr 1e-3 ...   (open_clip_train's flags: config/oc_flags.py)

Re-running the same command resumes where it stopped (see <run_dir>/manifest.json). Every
failure ends in one `error:` line (from rank 0, or from the one rank that met it) and exit code 2
(3 when training stopped on purpose), not a traceback (add --debug for it); every rank ends within
seconds of that line. On one node, `torchrun --standalone` picks a free rendezvous port, so two
runs at once never collide on torchrun's default port 29500.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from typing import Callable, Optional

from mcl_dist.config import oc_flags
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core.progress import close_bars
from mcl_dist.pipeline.dry_run import dry_run as plan
from mcl_dist.pipeline.runner import run_pipeline
from mcl_dist.training.loop import TrainingError
from mcl_dist.training.memory_estimate import GPUS


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    # root at WARNING: open_clip logs every model creation at INFO on the root logger
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("mcl_dist").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # open_clip warns once per model creation that no weights were loaded; that is expected here
    logging.getLogger().addFilter(lambda r: "No pretrained weights loaded" not in r.getMessage())


# Seconds a rank other than 0 waits after its own error before it prints it. Most errors are met
# by every rank (the checks run everywhere) and rank 0 prints them and ends at once; torchrun then
# stops the others within a fraction of a second, so they never print a second line. A rank still
# alive after the wait met an error of its own (rank 0 sits in a collective waiting for it).
RANK0_GRACE_S = 10


def guarded(fn: Callable[[], Optional[int]], debug: bool = False) -> int:
    """Run `fn`; every failure becomes one 'error:' line and exit code 2 (3 when training stopped
    on purpose), not a traceback (`--debug` shows it). Under torchrun the rank that reports ends its
    process right after the line (`report`), so the launch ends within seconds of it."""
    try:
        return fn() or 0
    except TrainingError as e:
        return report(f"error: {e}", 3, e)
    except ConfigError as e:  # bad input, with the fix in the message
        return report(f"error: {e}", 2, e, debug)
    except Exception as e:  # a damaged file, a full disk, ...: the message names it
        return report(f"error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", 2, e, debug)


def report(line: str, code: int, exc: BaseException, debug: bool = False) -> int:
    """Print the error line once for the whole launch; under torchrun, end this rank right after.

    World size 1 prints and returns `code`. Under torchrun rank 0 prints at once; another rank, or
    rank 0 when its collective failed because a peer ended (that peer prints its own error), first
    waits RANK0_GRACE_S for torchrun to stop it. The rank that prints then leaves with os._exit:
    a normal interpreter exit with torch loaded takes seconds (longer with data loader workers),
    all of which torchrun spends waiting before it stops the other ranks. Called from an except
    block (`--debug` prints the exception being handled)."""
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if multi and (os.environ.get("RANK", "0") != "0" or dist_utils.lost_peer(exc)):
        time.sleep(RANK0_GRACE_S)
    close_bars()  # a progress bar left open would prefix the line
    print(line, file=sys.stderr, flush=True)
    if debug:
        traceback.print_exc()
    if multi:
        end_process(code)
    return code


def end_process(code: int) -> None:
    """Leave now: flush what was printed and logged, skip the interpreter's slow teardown. Files
    are written atomically (mcl_dist/core/files.py) and the lock is released in run_pipeline's finally."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


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
