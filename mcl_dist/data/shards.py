"""Shard URL lists: brace expansion, local existence checks and sample counting."""
from __future__ import annotations

import os
import tarfile

import braceexpand

from mcl_dist.config.schema import ConfigError


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def expand_urls(spec: str, key: str = "data.train_shards") -> list[str]:
    """`a/{000..009}.tar::b/{0..3}.tar` -> list of URLs; local files must exist."""
    urls: list[str] = []
    for part in spec.replace("\n", "::").split("::"):
        part = part.strip()
        if part:
            urls += list(braceexpand.braceexpand(part))
    if not urls:
        raise ConfigError(f"'{key}' names no shards ({spec!r})")
    missing = [u for u in urls if is_local(u) and not os.path.exists(local_path(u))]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ConfigError(f"'{key}': {len(missing)} of {len(urls)} shards not found: {shown}")
    return urls


def sample_key(name: str) -> str:
    """webdataset's grouping rule: the key is the path up to the first dot of the basename."""
    directory, base = os.path.split(name)
    stem = base.split(".", 1)[0]
    return os.path.join(directory, stem) if directory else stem


def count_samples(urls: list[str]) -> int:
    """Count samples of local shards from tar headers only (no member data is read)."""
    total = 0
    for url in urls:
        if not is_local(url):
            raise ConfigError(f"'data.num_samples' must be set for remote shards ({url}): "
                              "their samples cannot be counted without reading them")
        keys = set()
        try:
            with tarfile.open(local_path(url), "r:") as tar:
                for member in tar:
                    if member.isreg() and not os.path.basename(member.name).startswith("__"):
                        keys.add(sample_key(member.name))
        except (tarfile.TarError, OSError):
            pass  # a damaged shard counts what it has; streaming reports the damage
        total += len(keys)
    return total
