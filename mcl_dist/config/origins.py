"""Where each configuration value came from, so that an error about it names that place: the YAML
file, a key=value override typed on the command line, or the open_clip_train flag that set it.

    error: stages.1.k=0 (command line): 'stages.1.k' must be an int >= 2 or 'auto', got 0
    error: --precision fp16: 'train.precision' must be one of auto, fp32, amp, amp_bf16, bf16, got 'fp16'; ...
    error: configs/demo.yaml: 'train.lr' must be a finite number, got nan

`Sources` is a str (the config file's name, what every value not given on the command line
blames), so the checks that take a plain `where` string take it unchanged; the checks of one key
ask `blame(where, key)`.
"""
from __future__ import annotations

from typing import Any


class Override(str):
    """A key=value override made by an open_clip_train flag; `flag` is what the user typed
    (`--precision fp16`), which an error about the value names instead of the dotted key."""

    flag: str

    def __new__(cls, text: str, flag: str) -> "Override":
        obj = super().__new__(cls, text)
        obj.flag = flag
        return obj


class Sources(str):
    """The config file's name plus, for each key the command line set, what set it."""

    given: dict[str, str]  # key -> the flag as typed, or the override as typed
    flags: set[str]  # the keys an open_clip_train flag set

    def __new__(cls, path: str) -> "Sources":
        obj = super().__new__(cls, path)
        obj.given, obj.flags = {}, set()
        return obj

    def set(self, key: str, item: str) -> None:
        """`item` (an override as typed, or an Override from a flag) set `key`; a later one wins,
        and a whole section or stage list set later replaces what was said of its keys."""
        for k in [k for k in self.given if k == key or k.startswith(key + ".")]:
            del self.given[k]
            self.flags.discard(k)
        flag = getattr(item, "flag", None)
        self.given[key] = flag or str(item)
        if flag:
            self.flags.add(key)

    def _setter(self, key: str) -> str | None:
        """The given key that set `key`'s value: itself or a section above it."""
        parts = key.split(".")
        return next((k for k in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if k in self.given), None)

    def of(self, *keys: str) -> str:
        """What to blame for the keys' values: the flags as typed, the overrides as typed (then
        "(command line)"), and the file for a key the command line did not set, joined by "and"."""
        setters = list(dict.fromkeys(self._setter(k) for k in keys))
        flags = [self.given[k] for k in setters if k in self.flags]
        typed = [self.given[k] for k in setters if k is not None and k not in self.flags]
        parts = flags + ([", ".join(typed) + " (command line)"] if typed else [])
        return " and ".join(parts + ([str(self)] if None in setters else []))


def blame(where: Any, *keys: str) -> str:
    """The source of the keys' values when `where` knows the sources, else `where` itself."""
    return where.of(*keys) if isinstance(where, Sources) else str(where)


def attach(cfg: Any, sources: Sources) -> None:
    """Keep the sources with the loaded config, for the checks that run later on it (world size,
    the data check); not a dataclass field, so never saved or fingerprinted."""
    cfg._sources = sources


def sources_of(cfg: Any, default: str) -> Any:
    return getattr(cfg, "_sources", None) or default
