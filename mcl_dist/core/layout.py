"""The run directory's layout: every path under `<run_dir>` and every step name, spelled once.

    <run_dir>/config.yaml manifest.json data_check.json data_report.json index/ wandb/
              run.lock .sync/                      (only while a launch runs)
              stage_<s>/checkpoints/step_<8 digits>.pt metrics.jsonl tb/ batches/rank<r>.jsonl checkpoint.pt
              stage_<s>/embed/part<r>-of<W>.{feats.npy,keys.npy,stats.json} embed/embed_stats.json
              stage_<s>/kmeans/assign<r>-of<W>.npz kmeans/centroids.npz kmeans/kmeans.json
              stage_<s>/labels.npz  stage_<s>/open_clip/   (open_clip objectives: mcl_dist/model/open_clip_dir.py)
              integrated/model.pt  integrated/open_clip/{stage_<s>/,integration.json}
              eval/results.json  report.md  loss_curves.png cluster_sizes.png mmvp_by_stage.png
              inspect/stage_<s>_<source>/          (mcl-inspect-clusters)

Steps, the report, the dry run, the commands and the tools take their paths from here, so a file
name is written once; `tests/test_layout.py` fails on any of these names spelled elsewhere in the
package. Which of the files a run writes (eval on or off, local or remote shards, the loggers
configured) is the steps' `outputs()` (mcl_dist/steps/); they name paths through these functions.
"""
from __future__ import annotations

import os
import re
from typing import Optional

# <run_dir>/
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
DATA_CHECK = "data_check.json"
DATA_REPORT = "data_report.json"
INDEX = "index"
WANDB = "wandb"
LOCK = "run.lock"
SYNC = ".sync"
INTEGRATED = "integrated"
INTEGRATED_MODEL = "model.pt"
OPEN_CLIP = "open_clip"  # a model as an open_clip local-dir folder (its files: open_clip's own names)
INTEGRATION = "integration.json"  # integrated/open_clip/: the stage folders, weights and scaling
EVAL = "eval"
EVAL_RESULTS = "results.json"
REPORT = "report.md"
LOSS_PLOT = "loss_curves.png"
CLUSTER_PLOT = "cluster_sizes.png"
MMVP_PLOT = "mmvp_by_stage.png"
INSPECT = "inspect"
# <run_dir>/stage_<s>/
STAGE = "stage_"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TB = "tb"
BATCHES = "batches"
STAGE_CHECKPOINT = "checkpoint.pt"
EMBED = "embed"
EMBED_STATS = "embed_stats.json"
KMEANS = "kmeans"
CENTROIDS = "centroids.npz"
KMEANS_SUMMARY = "kmeans.json"
LABELS = "labels.npz"
# per-rank and per-step files: a stem, the rank/step, a suffix
TRAIN_CHECKPOINT = ("step_", ".pt")
BATCH_LOG = ("rank", ".jsonl")
EMBED_PART = "part"
FEATS, KEYS, PART_STATS = ".feats.npy", ".keys.npy", ".stats.json"
ASSIGNMENT = ("assign", ".npz")

# every name above that names a file or folder: tests/test_layout.py refuses them elsewhere
FILE_NAMES = (CONFIG, MANIFEST, DATA_CHECK, DATA_REPORT, LOCK, SYNC, INTEGRATED_MODEL, INTEGRATION, EVAL_RESULTS,
              REPORT, LOSS_PLOT, CLUSTER_PLOT, MMVP_PLOT, METRICS, STAGE_CHECKPOINT, EMBED_STATS, CENTROIDS,
              KMEANS_SUMMARY, LABELS, FEATS, KEYS, PART_STATS)
DIR_NAMES = (INDEX, WANDB, INTEGRATED, OPEN_CLIP, EVAL, INSPECT, CHECKPOINTS, TB, BATCHES, EMBED, KMEANS)
STEMS = (STAGE, TRAIN_CHECKPOINT[0], BATCH_LOG[0], EMBED_PART, ASSIGNMENT[0])

_STAGE_RE = re.compile(rf"{STAGE}(\d+)(?:/|$)")
_TRAIN_CHECKPOINT_RE = re.compile(rf"{TRAIN_CHECKPOINT[0]}(\d{{8}}){re.escape(TRAIN_CHECKPOINT[1])}$")


# -- names ------------------------------------------------------------------------------------
def stage_name(s: int) -> str:
    """stage_<s>: the stage's folder, and its model's name in results.json and the report."""
    return f"{STAGE}{s}"


def step_name(kind: str, stage: Optional[int] = None) -> str:
    """A step's name in the plan, the manifest, --redo and data_report.json: stage_1/kmeans, integrate."""
    return kind if stage is None else f"{stage_name(stage)}/{kind}"


def stage_of(name: str) -> Optional[int]:
    """The stage of a stage or step name (stage_2, stage_2/train), else None (integrated, report)."""
    m = _STAGE_RE.match(str(name))
    return int(m.group(1)) if m else None


# -- <run_dir>/ ---------------------------------------------------------------------------------
def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, CONFIG)


def manifest_path(run_dir: str) -> str:
    return os.path.join(run_dir, MANIFEST)


def data_check_path(run_dir: str) -> str:
    return os.path.join(run_dir, DATA_CHECK)


def data_report_path(run_dir: str) -> str:
    return os.path.join(run_dir, DATA_REPORT)


def index_dir(run_dir: str, setting: str = "") -> str:
    """The tar index cache: data.index_dir when set, else <run_dir>/index."""
    return setting or os.path.join(run_dir, INDEX)


def wandb_dir(run_dir: str) -> str:
    """Where wandb writes its wandb/ folder when WANDB_DIR is unset: the run directory."""
    return run_dir


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK)


def sync_dir(run_dir: str) -> str:
    return os.path.join(run_dir, SYNC)


def integrated_path(run_dir: str) -> str:
    return os.path.join(run_dir, INTEGRATED, INTEGRATED_MODEL)


def integrated_open_clip(run_dir: str) -> str:
    """integrated/open_clip/: one local-dir folder per stage (stage_<s>/) and integration.json."""
    return os.path.join(run_dir, INTEGRATED, OPEN_CLIP)


def results_path(run_dir: str) -> str:
    return os.path.join(run_dir, EVAL, EVAL_RESULTS)


def report_path(run_dir: str) -> str:
    return os.path.join(run_dir, REPORT)


def run_dir_of(model_file: str) -> str:
    """The run directory of a stage checkpoint or the integrated model (each one folder below it)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(model_file)))


def inspect_dir(run_dir: str, s: int, source: str) -> str:
    return os.path.join(run_dir, INSPECT, f"{stage_name(s)}_{source}")


# -- <run_dir>/stage_<s>/ -------------------------------------------------------------------------
def stage_dir(run_dir: str, s: int) -> str:
    return os.path.join(run_dir, stage_name(s))


def stage_checkpoint(run_dir: str, s: int) -> str:
    """The stage's model (open_clip-loadable)."""
    return os.path.join(stage_dir(run_dir, s), STAGE_CHECKPOINT)


def open_clip_folder(sdir: str) -> str:
    """stage_<s>/open_clip/: the stage's weights as an open_clip local-dir folder."""
    return os.path.join(sdir, OPEN_CLIP)


def checkpoint_dir(sdir: str) -> str:
    return os.path.join(sdir, CHECKPOINTS)


def train_checkpoint(sdir: str, step: int) -> str:
    return os.path.join(checkpoint_dir(sdir), f"{TRAIN_CHECKPOINT[0]}{step:08d}{TRAIN_CHECKPOINT[1]}")


def train_checkpoints_glob(sdir: str) -> str:
    return os.path.join(checkpoint_dir(sdir), f"{TRAIN_CHECKPOINT[0]}*{TRAIN_CHECKPOINT[1]}")


def is_train_checkpoint(path: str) -> bool:
    return _TRAIN_CHECKPOINT_RE.search(path) is not None


def metrics_path(sdir: str) -> str:
    return os.path.join(sdir, METRICS)


def tb_dir(sdir: str) -> str:
    return os.path.join(sdir, TB)


def batch_log(sdir: str, rank: int) -> str:
    return os.path.join(sdir, BATCHES, f"{BATCH_LOG[0]}{rank}{BATCH_LOG[1]}")


def batch_logs_glob(sdir: str) -> str:
    return os.path.join(sdir, BATCHES, f"{BATCH_LOG[0]}*{BATCH_LOG[1]}")


def embed_dir(run_dir: str, s: int) -> str:
    return os.path.join(stage_dir(run_dir, s), EMBED)


def embed_stats_path(run_dir: str, s: int) -> str:
    return os.path.join(embed_dir(run_dir, s), EMBED_STATS)


def kmeans_dir(run_dir: str, s: int) -> str:
    return os.path.join(stage_dir(run_dir, s), KMEANS)


def centroids_path(run_dir: str, s: int) -> str:
    return os.path.join(kmeans_dir(run_dir, s), CENTROIDS)


def kmeans_summary_path(run_dir: str, s: int) -> str:
    return os.path.join(kmeans_dir(run_dir, s), KMEANS_SUMMARY)


def labels_path(run_dir: str, s: int) -> str:
    return os.path.join(stage_dir(run_dir, s), LABELS)


# -- per-rank parts (an embedding or k-means of world size W: one file per rank) ---------------------
def _part(directory: str, stem: str, rank: int, world: int, suffix: str) -> str:
    return os.path.join(directory, f"{stem}{rank:04d}-of{world:04d}{suffix}")


def embed_part(out_dir: str, rank: int, world: int, suffix: str) -> str:
    """part<rank>-of<world><suffix>, suffix one of FEATS, KEYS, PART_STATS."""
    return _part(out_dir, EMBED_PART, rank, world, suffix)


def embed_parts_glob(out_dir: str, suffix: str = ".*") -> str:
    """Every world size's parts (stale ones included): part*-of*<suffix>."""
    return os.path.join(out_dir, f"{EMBED_PART}*-of*{suffix}")


def assignment_path(out_dir: str, rank: int, world: int) -> str:
    return _part(out_dir, ASSIGNMENT[0], rank, world, ASSIGNMENT[1])


def assignments_glob(out_dir: str) -> str:
    return os.path.join(out_dir, f"{ASSIGNMENT[0]}*-of*{ASSIGNMENT[1]}")


def of_world(path: str, world: int) -> bool:
    """True if a part file belongs to world size `world`."""
    return f"-of{world:04d}." in os.path.basename(path)


def rank_parts(directory: str, stem: str, suffix: str, world: int) -> str:
    """The per-rank files of a world size, as one brace pattern: part{0000..0001}-of0002.feats.npy."""
    ranks = f"{{0000..{world - 1:04d}}}" if world > 1 else "0000"
    return os.path.join(directory, f"{stem}{ranks}-of{world:04d}{suffix}")


def embed_parts_pattern(out_dir: str, world: int, suffix: str) -> str:
    return rank_parts(out_dir, EMBED_PART, suffix, world)


def assignments_pattern(out_dir: str, world: int) -> str:
    return rank_parts(out_dir, ASSIGNMENT[0], ASSIGNMENT[1], world)


def folder(path: str) -> str:
    """An output pattern for a folder the step owns whole (a trailing '/')."""
    return os.path.join(path, "")
