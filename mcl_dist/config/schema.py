"""The run configuration's schema: one dataclass per section, with defaults and why they are so,
and the values derived from it (micro-batch, steps and lr of a stage, default run directory).

mcl_dist/config/load.py reads it from YAML plus dotted command-line overrides and checks it.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import yaml

from mcl_dist.core.files import write_text


class ConfigError(ValueError):
    """A bad configuration; the message names the key and the source."""


@dataclass
class DataConfig:
    train_shards: str = ""  # brace-expanded URL list, e.g. /data/cc12m/{00000..01242}.tar, or a CSV file
    # how train_shards is read (mcl_dist/data/dataset_types.py): webdataset | csv | auto (a .csv or
    # .tsv file is a CSV, anything else webdataset shards); open_clip_train's --dataset-type
    dataset_type: str = "auto"
    # a CSV's header names the image-path column and the caption column; image paths are relative
    # to the CSV's folder or absolute (open_clip_train's --csv-img-key, --csv-caption-key, --csv-separator)
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    synthetic: bool = False  # make synthetic shards under synthetic_dir on first use (demo)
    synthetic_dir: str = "data/demo"
    synthetic_train: int = 2048
    synthetic_test: int = 512
    synthetic_samples_per_shard: int = 256
    num_samples: int = 0  # samples per epoch for streaming; 0 = count local shards' members
    workers: int = 2
    shuffle_buffer: int = 1000
    max_bad_fraction: float = 0.05  # stop when more than this share of samples is unreadable
    image_ext: str = "jpg;png;webp;jpeg"
    caption_ext: str = "txt"
    index_dir: str = ""  # tar index cache; default <run_dir>/index
    # CLIP: False trains on the eval transform (resize + centre crop), e.g. for synthetic 32 px data
    # whose 2 px frame open_clip's random-resized crop would cut away
    augment: bool = True
    # keep every decoded training sample in memory (needs augment false, so that a sample decodes
    # the same every epoch): small data sets such as the benchmark's then decode once, not once an
    # epoch. The cache lives in the process that decodes: use data.workers=0 for stages >= 1,
    # whose DataLoader workers start afresh every epoch
    cache_decoded: bool = False
    # decode guards: an image over this many pixels, or a member over this many bytes, is a bad
    # sample (a 97 KB PNG of 97 M pixels decodes to ~1 GB); 0 turns a guard off
    max_image_pixels: int = 40_000_000
    max_member_bytes: int = 64 << 20


@dataclass
class ModelConfig:
    name: str = "ViT-B-32"  # open_clip model name, or the stem of config_file
    config_file: str = ""  # JSON model config (e.g. configs/models/tiny-vit.json)
    pretrained: str = ""  # open_clip pretrained tag or a local checkpoint path
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = True  # open_clip's CLIP.lock_text_tower accepts only True
    grad_checkpointing: bool = False
    force_quick_gelu: bool = False  # QuickGELU as OpenAI's CLIP weights need (open_clip's --force-quick-gelu)
    # how the integrated model joins the stages' features (mcl_dist/integration/integrated_model.py): normalized = each
    # stage L2-normalised, then concatenated (cosine = mean of the stages' cosines); raw = raw features
    # concatenated, then normalised (the public MCL code's MMVP notebook)
    integration: str = "normalized"
    # stage weights of the integrated model (mcl_dist/integration/integrated_model.py WEIGHTINGS), applied after the
    # per-stage scaling that model.integration chose: equal (the paper's concatenation), cka_drop
    # (weight 0 for a stage whose linear CKA with the earlier stages' features is >=
    # integration_redundant_cka), cka_weight (weight 1 - that CKA), first_last (weight 1 for stage 0
    # and the last stage, 0 for the others); the CKA is measured on the first integration_samples
    # training samples. No labels are read.
    integration_weights: str = "equal"
    integration_redundant_cka: float = 0.9
    integration_samples: int = 2048


@dataclass
class TrainConfig:
    global_batch_size: int = 256  # samples per optimizer step over all ranks and micro-steps
    accum_freq: int = 1  # micro-batches per optimizer step
    epochs: float = 1.0
    max_steps: int = 0  # > 0 caps the steps of a stage (tests, benchmarks)
    lr: float = 5e-4
    wd: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 100
    # > 0: each stage warms up for this share of its own steps instead (short MCL stages would
    # otherwise spend a fixed warmup_steps each: 3 stages x 20 of 240 steps)
    warmup_share: float = 0.0
    grad_clip_norm: float = 0.0  # 0 disables clipping
    lr_scheduler: str = "cosine"  # cosine | const | const-cooldown (open_clip_train's --lr-scheduler)
    lr_cooldown_steps: int = 0  # const-cooldown: the last steps of each stage that cool down
    lr_cooldown_power: float = 1.0  # 1 = linear cool-down (open_clip_train's --lr-cooldown-power)
    lr_cooldown_end: float = 0.0  # lr at the end of the cool-down (--lr-cooldown-end)
    # auto | fp32 | amp | amp_bf16 | bf16; amp = fp16 autocast + a GradScaler (open_clip_train's --precision amp)
    precision: str = "auto"
    seed: int = 0
    gather_with_grad: bool = True
    local_loss: bool = True
    logit_scale_max: float = 100.0
    engine: str = "ddp"  # ddp | deepspeed
    optimizer: str = "adamw"  # adamw | lars (LARS: SimCLR's large-batch optimizer)
    zero_stage: int = 2  # DeepSpeed ZeRO stage
    deepspeed_config: str = ""  # optional raw DeepSpeed JSON that overrides ours
    log_every: int = 10
    # where metrics go besides <stage>/metrics.jsonl (open_clip_train's --report-to): a comma list of
    # tensorboard and wandb, or "" for neither; wandb logs one run per stage, grouped by run directory
    report_to: str = "tensorboard"
    checkpoint_every: int = 100  # optimizer steps between periodic checkpoints
    keep_checkpoints: int = 2
    nan_patience: int = 0  # non-finite losses tolerated in a row before stopping
    # a later stage whose group cutting (label remainders smaller than a group, one-sample labels)
    # would drop more than this share of its samples is refused (mcl_dist/data/group_cut.py)
    max_dropped_share: float = 0.05


@dataclass
class StageConfig:
    """One MCL stage. Stage 0 is plain contrastive training (or a pretrained model)."""

    # clusters of the previous stage's embeddings (stages >= 1); 'auto': chosen by cluster.k_rule
    k: Union[int, str] = 32
    group_size: int = 32  # samples of one pseudo-label per group (stages >= 1)
    init: str = "previous"  # previous | base | scratch
    epochs: Optional[float] = None  # None = train.epochs
    max_steps: Optional[int] = None  # None = train.max_steps
    lr: Optional[float] = None  # None = train.lr
    pretrained: str = ""  # stage 0 only: use this open_clip tag / checkpoint, skip training
    lock_image: Optional[bool] = None
    lock_text: Optional[bool] = None


@dataclass
class ClusterConfig:
    embed: str = "image"  # image | text | joint
    embed_batch_size: int = 256
    kmeans_iters: int = 20
    kmeans_tol: float = 1e-4
    spherical: bool = True
    backend: str = "torch"  # torch | faiss
    min_label_size: int = 4  # smaller label combinations fall back to their parent
    # control only: each stage's pseudo-labels permuted over the samples (the same group sizes, so the
    # same negatives per anchor, but no cluster structure); the benchmark's random-label arms
    shuffle_labels: bool = False
    # stages.N.k: auto (mcl_dist/clustering/auto_k.py): the smallest candidate whose next one lowers the
    # within-cluster spread by less than k_min_gain of it
    k_rule: str = "spread"
    k_candidates: list = field(default_factory=lambda: [8, 16, 32, 64, 128])
    k_min_gain: float = 0.1


@dataclass
class EvalConfig:
    enabled: bool = True
    test_shards: str = ""  # labelled shards for zero-shot and linear probe
    label_fields: list = field(default_factory=list)  # fields of {key}.json to evaluate
    mmvp_dir: str = ""
    zero_shot_classes: str = ""  # JSON {field: {"classnames": [...], "templates": [...]}}
    probe_max_samples: int = 4000  # training-shard samples used to fit the linear probe
    metrics: list = field(default_factory=list)  # names in mcl_dist/eval/metric_registry.py; empty = every one with data
    batch_size: int = 256


@dataclass
class SimCLRConfig:
    """objective: simclr (image-only shards, two augmented views, NT-Xent)."""

    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | tiny
    cifar_stem: bool = True  # 3x3 stride-1 stem without max-pool, for small images
    image_size: int = 32
    proj_hidden: int = 512
    proj_dim: int = 128
    temperature: float = 0.5
    crop: bool = True  # random resized crop
    crop_scale: float = 0.2  # its smallest area share
    flip: bool = True
    color_jitter: float = 0.5  # strength; 0 turns it off (keeps colour as the easy feature)
    grayscale: float = 0.2  # probability; 0 turns it off


@dataclass
class DistConfig:
    timeout_min: int = 30  # collective timeout; rank-0-only work (index, eval) waits outside collectives


@dataclass
class DebugConfig:
    log_batches: bool = False  # write <run_dir>/stage_<s>/batches/rank<r>.jsonl
    # tests: SIGKILL the launcher at a point, e.g. "stage_1/kmeans" (its work done, not yet
    # recorded) or "stage_1/train:3" (right after step 3, its checkpoint saved)
    kill_at: str = ""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list = field(default_factory=lambda: [StageConfig()])
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    objective: str = "clip"  # a name in mcl_dist/objectives/ REGISTRY
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    run_dir: str = ""
    # The directory this config's relative paths resolve against: save_config writes the launch's
    # working directory, so a reader elsewhere (an exporter, the inspector) finds the run's own data,
    # not a file of the same relative name under its own working directory.
    anchor: str = ""


def saved_path(path: str, anchor: str) -> str:
    """A path (or `a::b` list) read from a run's config.yaml, resolved where the run resolved it.
    URLs and `pipe:` commands are left as they are."""
    if not path or not anchor:
        return path
    parts = str(path).split("::")
    return "::".join(p if (":" in p.split("/")[0] or os.path.isabs(p)) else os.path.join(anchor, p) for p in parts)


# every setting that names a file or folder, resolved against the anchor by readers of a saved run
PATH_KEYS = (("data", "train_shards"), ("data", "synthetic_dir"), ("data", "index_dir"), ("model", "config_file"),
             ("eval", "test_shards"), ("eval", "mmvp_dir"), ("eval", "zero_shot_classes"))


def anchored(cfg: "Config") -> "Config":
    """A saved run's config with its relative paths resolved at its anchor (in place; returned)."""
    for section, key in PATH_KEYS:
        sec = getattr(cfg, section)
        setattr(sec, key, saved_path(getattr(sec, key), cfg.anchor))
    return cfg


def default_run_dir(config_path: str) -> str:
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def micro_batch_size(cfg: Config, world_size: int) -> int:
    return cfg.train.global_batch_size // (world_size * cfg.train.accum_freq)


def stage_max_steps(cfg: Config, stage: int) -> int:
    """A stage's fixed step count: its max_steps, else train.max_steps (0: by epochs)."""
    st = cfg.stages[stage]
    return st.max_steps if st.max_steps is not None else cfg.train.max_steps


def stage_epochs(cfg: Config, stage: int) -> float:
    st = cfg.stages[stage]
    return st.epochs if st.epochs is not None else cfg.train.epochs


def stage_steps(cfg: Config, stage: int, num_samples: int) -> int:
    """Optimizer steps of a stage: its max_steps, else train.max_steps, else epochs over the data."""
    max_steps = stage_max_steps(cfg, stage)
    if max_steps:
        return max_steps
    steps_per_epoch = max(1, num_samples // cfg.train.global_batch_size)
    return max(1, math.ceil(stage_epochs(cfg, stage) * steps_per_epoch))


def stage_peak_lr(cfg: Config, stage: int) -> float:
    """A stage's peak learning rate: its own lr, else train.lr."""
    lr = cfg.stages[stage].lr
    return lr if lr is not None else cfg.train.lr


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str) -> None:
    raw = to_dict(cfg)
    if cfg.model.config_file:  # the file names the model; a default name beside it would read as a second one
        raw["model"].pop("name", None)
    raw.pop("run_dir", None)  # the directory the file is in: a copied run directory must not name the old one
    raw["anchor"] = os.path.abspath(cfg.anchor or os.getcwd())
    write_text(yaml.safe_dump(raw, sort_keys=False), path)
