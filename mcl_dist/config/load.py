"""Loading a run configuration: YAML plus dotted command-line overrides, checked against the schema.

`load_config("configs/demo.yaml", ["train.lr=1e-4", "stages.1.k=64"])` returns a `Config`
(mcl_dist/config/schema.py). Unknown keys, wrong types and impossible values are `ConfigError`s that
name the key (and the closest valid key for a typo), never a traceback from deep inside the trainer.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from typing import Any

import yaml

from mcl_dist.config.choices import check_choices
from mcl_dist.config.key_synonyms import suggest
from mcl_dist.config.origins import Sources, attach, blame, sources_of
from mcl_dist.config.registry import unknown_choice
from mcl_dist.config.schema import Config, ConfigError, StageConfig, micro_batch_size
from mcl_dist.data.sampler import group_layout

# plain enumerations; the choices that are registries (objective, engine, optimizer, scheduler,
# k-means backend, eval metrics) are checked by mcl_dist/config/choices.py
_CHOICES = {
    "train.precision": ("auto", "fp32", "amp", "amp_bf16", "bf16"),
    "model.integration": ("normalized", "raw"),
    "stages.init": ("previous", "base", "scratch"),
    "cluster.embed": ("image", "text", "joint"),
}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = suggest(key, valid)
    hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X], or Union[int, str] (stages.N.k: 32 or auto)
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) > 1:
            for option in options:
                try:
                    return _coerce(value, option, key, where)
                except ConfigError:
                    pass
            names = " or ".join(o.__name__ for o in options)
            raise ConfigError(f"{where}: '{key}' must be {names}, got {type(value).__name__} {value!r}")
        tp = options[0]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is list and isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(item, key, where)
        return list(value)
    if tp in (bool, int, float, str) and type(value) is tp:
        _check_finite(value, key, where)
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where}: '{key}' must be {name}, got {type(value).__name__} {value!r}")


def _check_finite(value: Any, key: str, where: str) -> None:
    """YAML reads .nan and .inf (and an override nan or inf) as floats; no setting means either, and
    a NaN learning rate would train NaN weights without a word."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value}")


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{blame(where, prefix.rstrip('.'))}: '{prefix.rstrip('.') or 'top level'}' must be a "
                          f"mapping, got {raw!r}")
    hints = _hints(cls)
    obj = cls()
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in hints:
            valid = [f"{prefix}{k}" for k in hints]
            raise _unknown(key, valid, blame(where, key))
        tp = hints[name]
        if _is_dataclass_type(tp):
            value = _build(tp, value, key + ".", where)
        elif name == "stages" and cls is Config:
            value = _build_stages(value, where)
        else:
            value = _coerce(value, tp, key, blame(where, key))
        setattr(obj, name, value)
    return obj


def _build_stages(raw: Any, where: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{blame(where, 'stages')}: 'stages' must be a non-empty list of stage settings")
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


def _check_key(key: str) -> Any:
    """An override must name a schema field (stages.N.field for a stage); returns the field's type
    (None for a whole section or the whole stage list)."""
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
                return None  # the whole list, e.g. stages=[{}, {k: 64}]
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
        else:
            return tp
        i += 1
    return None


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
    where = Sources(path or "defaults")  # what an error blames: the file, or the override or flag that set the key
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
    for item, (key, value) in zip(overrides, parse_overrides(list(overrides))):
        tp = _check_key(key)
        where.set(key, item)  # a bad value is the command line's fault (or its flag's), not the YAML file's
        if tp is not None:
            value = _coerce(value, tp, key, where.of(key))
        _set_dotted(raw, key, value, f"override '{key}'")
    _check_one_model(raw.get("model"), where)
    cfg = _build(Config, raw, "", where)
    validate(cfg, where)
    attach(cfg, where)
    return cfg


def _check_one_model(model: Any, where: str) -> None:
    """model.config_file wins over model.name, so both naming different models would silently
    train the config file's (demo.yaml plus model.name=ViT-B-32 would train the tiny ViT)."""
    if not isinstance(model, dict) or not model.get("name") or not model.get("config_file"):
        return
    stem = os.path.splitext(os.path.basename(str(model["config_file"])))[0]
    if str(model["name"]) != stem:
        given = [blame(where, k) for k in ("model.name", "model.config_file") if blame(where, k) != str(where)]
        raise ConfigError(f"{given[-1] if given else where}: model.name '{model['name']}' and model.config_file "
                          f"{model['config_file']} (model '{stem}') name two models; to train '{model['name']}' also set "
                          f"model.config_file= (empty), or drop model.name")


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
            raise ConfigError(f"{blame(where, key)}: '{key}' must be positive, got {value}")
    nonneg = {"train.epochs": t.epochs, "train.max_steps": t.max_steps, "train.lr": t.lr,
              "train.wd": t.wd, "train.warmup_steps": t.warmup_steps,
              "train.grad_clip_norm": t.grad_clip_norm, "data.workers": cfg.data.workers,
              "data.num_samples": cfg.data.num_samples, "cluster.min_label_size": cfg.cluster.min_label_size,
              "data.max_image_pixels": cfg.data.max_image_pixels, "data.max_member_bytes": cfg.data.max_member_bytes}
    for key, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{blame(where, key)}: '{key}' must be >= 0, got {value}")
    check_whole_epochs(cfg, where)
    if not 0.0 <= t.warmup_share < 1.0:
        raise ConfigError(f"{blame(where, 'train.warmup_share')}: 'train.warmup_share' must be in [0, 1), "
                          f"got {t.warmup_share}")
    if cfg.data.cache_decoded and cfg.data.augment:
        raise ConfigError(f"{blame(where, 'data.cache_decoded', 'data.augment')}: 'data.cache_decoded' needs "
                          f"'data.augment' false (an augmented sample differs every epoch, a cached one would not)")
    if not 0.0 <= t.max_dropped_share <= 1.0:
        raise ConfigError(f"{blame(where, 'train.max_dropped_share')}: 'train.max_dropped_share' must be in [0, 1], "
                          f"got {t.max_dropped_share}")
    if not 0.0 <= cfg.data.max_bad_fraction <= 1.0:
        raise ConfigError(f"{blame(where, 'data.max_bad_fraction')}: 'data.max_bad_fraction' must be in [0, 1], "
                          f"got {cfg.data.max_bad_fraction}")
    if t.global_batch_size % t.accum_freq:
        raise ConfigError(f"{blame(where, 'train.global_batch_size', 'train.accum_freq')}: 'train.global_batch_size' "
                          f"({t.global_batch_size}) must be divisible by 'train.accum_freq' ({t.accum_freq})")
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        targets = cfg.stages if section == "stages" else [getattr(cfg, section)]
        for i, obj in enumerate(targets):
            if getattr(obj, name) not in choices:
                label = f"stages.{i}.{name}" if section == "stages" else key
                raise unknown_choice(label, getattr(obj, name), choices, blame(where, label))
    check_choices(cfg, where)
    for i, st in enumerate(cfg.stages):
        if i >= 1 and st.k != "auto" and (type(st.k) is not int or st.k < 2):
            raise ConfigError(f"{blame(where, f'stages.{i}.k')}: 'stages.{i}.k' must be an int >= 2 or 'auto', "
                              f"got {st.k!r}")
        if i >= 1 and st.group_size < 2:
            raise ConfigError(f"{blame(where, f'stages.{i}.group_size')}: 'stages.{i}.group_size' must be >= 2 (a sample "
                              f"needs a negative), got {st.group_size}")
        if i >= 1 and st.pretrained:
            raise ConfigError(f"{blame(where, f'stages.{i}.pretrained')}: 'stages.{i}.pretrained' is only valid for "
                              f"stage 0")
    if not cfg.data.train_shards and not cfg.data.synthetic:
        raise ConfigError(f"{blame(where, 'data.train_shards')}: 'data.train_shards' is empty; give shard URLs (or a "
                          f"CSV file) or set data.synthetic=true")
    if cfg.data.synthetic and not cfg.data.train_shards:  # the demo's data: its size is a setting
        check_k(cfg, cfg.data.synthetic_train, "data.synthetic_train", where)


def check_whole_epochs(cfg: Config, where: str) -> None:
    """A stage trains whole epochs (or train.max_steps steps). Stages >= 1 plan their cluster-bucketed
    batches afresh every epoch, so a fractional last epoch would train a random part of the label
    groups and leave the others' samples seen once fewer; open_clip_train's --epochs is a whole
    number too. Part of an epoch is said exactly in steps: train.max_steps / stages.N.max_steps."""
    given = [("train.epochs", cfg.train.epochs)] + [(f"stages.{i}.epochs", st.epochs) for i, st in enumerate(cfg.stages)]
    for key, epochs in given:
        if epochs is not None and epochs != int(epochs):
            raise ConfigError(f"{blame(where, key)}: '{key}' must be a whole number of epochs, got {epochs:g}; for part "
                              f"of an epoch set the steps instead ({key.rsplit('.', 1)[0]}.max_steps; the dry run "
                              f"prints the steps of one epoch)")


def check_k(cfg: Config, samples: int, counted: str, where: str) -> None:
    """k-means needs at least one sample per cluster. Refused where the count is first known: at load
    for the synthetic data (data.synthetic_train), by the dry run from the counted shards, and by the
    run's data check from the shards' index, before stage 0 trains."""
    for i, st in enumerate(cfg.stages[1:], start=1):
        if st.k != "auto" and st.k > samples:
            key = f"stages.{i}.k"
            raise ConfigError(f"{blame(where, key)}: '{key}' ({st.k:,}) is more than the {samples:,} training samples "
                              f"({counted}); k-means needs at least one sample per cluster: lower it, or set it to auto")


def check_world(cfg: Config, world_size: int, where: str = "config") -> None:
    """The global batch must split evenly into ranks and micro-steps."""
    t = cfg.train
    where = sources_of(cfg, where)
    if t.global_batch_size % (world_size * t.accum_freq):
        raise ConfigError(
            f"{blame(where, 'train.global_batch_size')}: 'train.global_batch_size' ({t.global_batch_size}) must be divisible by world size x "
            f"'train.accum_freq' ({world_size} x {t.accum_freq}); try {world_size * t.accum_freq * max(1, t.global_batch_size // (world_size * t.accum_freq))}")
    check_groups(cfg, world_size, where)


def check_groups(cfg: Config, world_size: int, where: str = "config") -> None:
    """A group is either inside one rank's micro-batch or exactly the global micro-batch."""
    b = micro_batch_size(cfg, world_size)
    where = sources_of(cfg, where)
    for i, st in enumerate(cfg.stages[1:], start=1):
        if group_layout(st.group_size, b, world_size) is None:
            raise ConfigError(
                f"{blame(where, f'stages.{i}.group_size')}: 'stages.{i}.group_size' ({st.group_size}) must be <= the per-rank micro-batch ({b}: "
                f"several groups per micro-batch, no gather) or equal the global micro-batch ({b * world_size}: "
                f"one label per step, features gathered)")
