"""Typed run configuration: dataclasses loaded from YAML plus dotted command-line overrides.

`load_config("configs/demo.yaml", ["train.lr=1e-4", "stages.1.k=64"])` returns a `Config`.
Unknown keys, wrong types and impossible values are `ConfigError`s that name the key (and the
closest valid key for a typo), never a traceback from deep inside the trainer.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from mcl_dist.data.sampler import group_layout


class ConfigError(ValueError):
    """A bad configuration; the message names the key and the source."""


@dataclass
class DataConfig:
    train_shards: str = ""  # brace-expanded URL list, e.g. /data/cc12m/{00000..01242}.tar
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
    precision: str = "auto"  # auto | fp32 | amp_bf16 | bf16
    seed: int = 0
    gather_with_grad: bool = True
    local_loss: bool = True
    logit_scale_max: float = 100.0
    engine: str = "ddp"  # ddp | deepspeed
    optimizer: str = "adamw"  # adamw | lars (LARS: SimCLR's large-batch optimizer)
    zero_stage: int = 2  # DeepSpeed ZeRO stage
    deepspeed_config: str = ""  # optional raw DeepSpeed JSON that overrides ours
    log_every: int = 10
    checkpoint_every: int = 100  # optimizer steps between periodic checkpoints
    keep_checkpoints: int = 2
    nan_patience: int = 0  # non-finite losses tolerated in a row before stopping


@dataclass
class StageConfig:
    """One MCL stage. Stage 0 is plain contrastive training (or a pretrained model)."""

    k: int = 32  # clusters of the previous stage's embeddings (stages >= 1)
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


@dataclass
class EvalConfig:
    enabled: bool = True
    test_shards: str = ""  # labelled shards for zero-shot and linear probe
    label_fields: list = field(default_factory=list)  # fields of {key}.json to evaluate
    mmvp_dir: str = ""
    zero_shot_classes: str = ""  # JSON {field: {"classnames": [...], "templates": [...]}}
    probe_max_samples: int = 4000  # training-shard samples used to fit the linear probe
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
    # recorded) or "stage_1/train:3" (right after step 3's checkpoint)
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
    objective: str = "clip"  # one of OBJECTIVES
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    run_dir: str = ""


# The objectives mcl_dist/objectives/ registers (it asserts the same names), kept here so that
# reading a config imports no torch. Image-only ones have no captions: k-means embeds images only,
# and their views come from their own settings, not data.augment.
OBJECTIVES = ("clip", "simclr")
IMAGE_ONLY = ("simclr",)

_CHOICES = {
    "train.precision": ("auto", "fp32", "amp_bf16", "bf16"),
    "train.engine": ("ddp", "deepspeed"),
    "train.optimizer": ("adamw", "lars"),
    "train.lr_scheduler": ("cosine", "const", "const-cooldown"),
    "stages.init": ("previous", "base", "scratch"),
    "cluster.embed": ("image", "text", "joint"),
    "cluster.backend": ("torch", "faiss"),
}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is list and isinstance(value, (list, tuple)):
        return list(value)
    if tp in (bool, int, float, str) and type(value) is tp:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where}: '{key}' must be {name}, got {type(value).__name__} {value!r}")


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {raw!r}")
    hints = _hints(cls)
    obj = cls()
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in hints:
            valid = [f"{prefix}{k}" for k in hints]
            raise _unknown(key, valid, where)
        tp = hints[name]
        if _is_dataclass_type(tp):
            value = _build(tp, value, key + ".", where)
        elif name == "stages" and cls is Config:
            value = _build_stages(value, where)
        else:
            value = _coerce(value, tp, key, where)
        setattr(obj, name, value)
    return obj


def _build_stages(raw: Any, where: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'stages' must be a non-empty list of stage settings")
    return [_build(StageConfig, item, f"stages.{i}.", where) for i, item in enumerate(raw)]


def _set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    """Apply `a.b.c=value` to the raw YAML tree; `stages.N.x` indexes the stage list."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: '{key}': stage index {part} out of range (have {len(node)} stages)")
            node = node[int(part)]
            continue
        if part == "stages" and "stages" not in node:
            node["stages"] = [{}]
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{where}: '{'.'.join(parts[:i + 1])}' is not a section")
    if isinstance(node, list):
        raise ConfigError(f"{where}: '{key}' needs a field after the stage index, e.g. stages.1.k=64")
    node[parts[-1]] = value


def _check_key(key: str) -> None:
    """An override must name a schema field (stages.N.field for a stage)."""
    cls: type = Config
    parts = key.split(".")
    prefix = ""
    i = 0
    while i < len(parts):
        hints = _hints(cls)
        name = parts[i]
        if name not in hints:
            raise _unknown(prefix + name, [prefix + k for k in hints], f"command-line override '{key}'")
        prefix += name + "."
        if name == "stages" and cls is Config:
            if i + 1 == len(parts):
                return  # the whole list, e.g. stages=[{}, {k: 64}]
            if not parts[i + 1].isdigit():
                raise ConfigError(f"command-line override '{key}': use stages.N.field, e.g. stages.1.k=64")
            prefix += parts[i + 1] + "."
            cls, i = StageConfig, i + 2
            continue
        tp = hints[name]
        if _is_dataclass_type(tp):
            cls = tp
        elif i != len(parts) - 1:
            raise ConfigError(f"command-line override '{key}': '{prefix.rstrip('.')}' is not a section")
        i += 1


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        # YAML scalar rules: 1e-4 is a float, true a bool, [a, b] a list.
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as e:
            why = str(e).splitlines()[0]
            raise ConfigError(f"command line: override '{item}': the value is not valid YAML ({why}); "
                              f"quote it or close its brackets (e.g. {key}=[1, 2])") from None
        if isinstance(value, str) and _looks_float(text):
            value = float(text)
        pairs.append((key.strip(), value))
    return pairs


def _looks_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    raw: dict = {}
    where = path or "defaults"
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"{path}: config file not found")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for key, value in parse_overrides(list(overrides)):
        _check_key(key)
        _set_dotted(raw, key, value, f"override '{key}'")
    cfg = _build(Config, raw, "", where)
    validate(cfg, where)
    return cfg


def validate(cfg: Config, where: str = "config") -> None:
    """Value checks that do not need the world size or the file system."""
    t = cfg.train
    positive = {
        "train.global_batch_size": t.global_batch_size,
        "train.accum_freq": t.accum_freq,
        "train.log_every": t.log_every,
        "train.checkpoint_every": t.checkpoint_every,
        "cluster.embed_batch_size": cfg.cluster.embed_batch_size,
        "cluster.kmeans_iters": cfg.cluster.kmeans_iters,
        "data.shuffle_buffer": cfg.data.shuffle_buffer,
        "data.synthetic_samples_per_shard": cfg.data.synthetic_samples_per_shard,
        "dist.timeout_min": cfg.dist.timeout_min,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}: '{key}' must be positive, got {value}")
    nonneg = {"train.epochs": t.epochs, "train.max_steps": t.max_steps, "train.lr": t.lr,
              "train.wd": t.wd, "train.warmup_steps": t.warmup_steps,
              "train.grad_clip_norm": t.grad_clip_norm, "data.workers": cfg.data.workers,
              "data.num_samples": cfg.data.num_samples, "cluster.min_label_size": cfg.cluster.min_label_size,
              "data.max_image_pixels": cfg.data.max_image_pixels, "data.max_member_bytes": cfg.data.max_member_bytes}
    for key, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{where}: '{key}' must be >= 0, got {value}")
    if not 0.0 <= t.warmup_share < 1.0:
        raise ConfigError(f"{where}: 'train.warmup_share' must be in [0, 1), got {t.warmup_share}")
    if not cfg.data.augment and cfg.objective in IMAGE_ONLY:
        raise ConfigError(f"{where}: 'data.augment' false applies to CLIP only; the views of objective "
                          f"{cfg.objective} are set under {cfg.objective}.* (crop, colour jitter)")
    if cfg.data.cache_decoded and cfg.data.augment:
        raise ConfigError(f"{where}: 'data.cache_decoded' needs 'data.augment' false (an augmented sample "
                          f"differs every epoch, a cached one would not)")
    if not 0.0 <= cfg.data.max_bad_fraction <= 1.0:
        raise ConfigError(f"{where}: 'data.max_bad_fraction' must be in [0, 1], got {cfg.data.max_bad_fraction}")
    if t.global_batch_size % t.accum_freq:
        raise ConfigError(f"{where}: 'train.global_batch_size' ({t.global_batch_size}) must be divisible by "
                          f"'train.accum_freq' ({t.accum_freq})")
    if t.lr_scheduler == "const-cooldown" and t.lr_cooldown_steps <= 0:
        raise ConfigError(f"{where}: 'train.lr_scheduler' const-cooldown needs 'train.lr_cooldown_steps' > 0, "
                          f"got {t.lr_cooldown_steps}")
    if t.engine == "deepspeed" and t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: 'train.zero_stage' must be 0, 1, 2 or 3, got {t.zero_stage}")
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"{where}: 'objective' must be one of {', '.join(OBJECTIVES)}, got {cfg.objective!r}")
    if cfg.objective in IMAGE_ONLY and cfg.cluster.embed != "image":
        raise ConfigError(f"{where}: 'cluster.embed' must be image for objective {cfg.objective} (there is no text)")
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        targets = cfg.stages if section == "stages" else [getattr(cfg, section)]
        for i, obj in enumerate(targets):
            value = getattr(obj, name)
            label = f"stages.{i}.{name}" if section == "stages" else key
            if value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{where}: '{label}' must be one of {', '.join(choices)}, got {value!r}{hint}")
    for i, st in enumerate(cfg.stages):
        if i >= 1 and st.k < 2:
            raise ConfigError(f"{where}: 'stages.{i}.k' must be >= 2, got {st.k}")
        if i >= 1 and st.group_size < 2:
            raise ConfigError(f"{where}: 'stages.{i}.group_size' must be >= 2 (a sample needs a negative), got {st.group_size}")
        if i >= 1 and st.pretrained:
            raise ConfigError(f"{where}: 'stages.{i}.pretrained' is only valid for stage 0")
    if not cfg.data.train_shards and not cfg.data.synthetic:
        raise ConfigError(f"{where}: 'data.train_shards' is empty; give shard URLs or set data.synthetic=true")


def check_world(cfg: Config, world_size: int, where: str = "config") -> None:
    """The global batch must split evenly into ranks and micro-steps."""
    t = cfg.train
    if t.global_batch_size % (world_size * t.accum_freq):
        raise ConfigError(
            f"{where}: 'train.global_batch_size' ({t.global_batch_size}) must be divisible by world size x "
            f"'train.accum_freq' ({world_size} x {t.accum_freq}); try {world_size * t.accum_freq * max(1, t.global_batch_size // (world_size * t.accum_freq))}")
    check_groups(cfg, world_size, where)


def check_groups(cfg: Config, world_size: int, where: str = "config") -> None:
    """A group is either inside one rank's micro-batch or exactly the global micro-batch."""
    b = micro_batch_size(cfg, world_size)
    for i, st in enumerate(cfg.stages[1:], start=1):
        if group_layout(st.group_size, b, world_size) is None:
            raise ConfigError(
                f"{where}: 'stages.{i}.group_size' ({st.group_size}) must be <= the per-rank micro-batch ({b}: "
                f"several groups per micro-batch, no gather) or equal the global micro-batch ({b * world_size}: "
                f"one label per step, features gathered)")


def default_run_dir(config_path: str) -> str:
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def micro_batch_size(cfg: Config, world_size: int) -> int:
    return cfg.train.global_batch_size // (world_size * cfg.train.accum_freq)


def stage_steps(cfg: Config, stage: int, num_samples: int) -> int:
    """Optimizer steps of a stage: its max_steps, else train.max_steps, else epochs over the data."""
    st = cfg.stages[stage]
    max_steps = st.max_steps if st.max_steps is not None else cfg.train.max_steps
    if max_steps:
        return max_steps
    epochs = st.epochs if st.epochs is not None else cfg.train.epochs
    steps_per_epoch = max(1, num_samples // cfg.train.global_batch_size)
    return max(1, math.ceil(epochs * steps_per_epoch))


def stage_lr(cfg: Config, stage: int) -> float:
    """A stage's peak learning rate: its own lr, else train.lr."""
    lr = cfg.stages[stage].lr
    return lr if lr is not None else cfg.train.lr


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str) -> None:
    from mcl_dist.io import write_text

    write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), path)
