"""A registry entry for a choice the config names (optimizer, scheduler, k-means backend): how to
build it, if anything, and `check(cfg, where)`, which refuses settings it cannot run when the
config loads. Objectives and engines are classes with the same `check`.
mcl_dist/config/choices.py lists every registry and checks the chosen entries."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from mcl_dist.config.schema import Config, ConfigError


def no_check(cfg: Config, where: str) -> None:
    """A choice that runs with any settings."""


@dataclass(frozen=True)
class Choice:
    build: Optional[Callable[..., Any]] = None
    check: Callable[[Config, str], None] = no_check


def unknown_choice(key: str, value: Any, names, where: str) -> ConfigError:
    close = difflib.get_close_matches(str(value), list(names), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{where}: '{key}' must be one of {', '.join(names)}, got {value!r}{hint}")
