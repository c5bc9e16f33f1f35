"""Checks of the training shards before any step runs.

Problems that would otherwise show up late or never are refused here, with one message:
fewer shards than ranks (an idle rank), duplicate sample keys across shards (found only at the
labels step, after stage 0, embedding and k-means), member names that are not UTF-8, and data
in which no sample (or too large a share) is usable: no image or caption member under the
configured extensions, members over `data.max_member_bytes`, or samples lost to damaged tars.

Everything is read from the tar index (headers only, cached under the run directory and reused
by stages >= 1), so the check costs no decoding. A tar cut short hides how much it lost: we
estimate it as the typical sample count of the intact shards minus the samples kept (img2dataset
writes equal shards), and at least the members scan_tar saw lost. Image decoding problems
(corrupt bytes, too many pixels) are found while streaming and counted there.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from mcl_dist.config.schema import ConfigError
from mcl_dist.data.shards import is_local, local_path


class DataError(ConfigError):
    """Training data that cannot give a correct run; the message names the shard and problem."""

    all_ranks = True  # every rank raises the same message: rank 0 prints it


def check_shard_count(n_shards: int, world: int, stage0_trains: bool) -> None:
    """Stage 0 streams whole shards per rank: a rank without one would have nothing to train on."""
    if stage0_trains and n_shards < world:
        raise DataError(
            f"data.train_shards: {n_shards} shard{'s' if n_shards != 1 else ''} for {world} ranks; stage 0 gives "
            f"every rank whole shards, so it needs at least {world}. Split the data into more shards "
            f"(mcl-make-shards) or run with at most {n_shards} ranks")


def check_remote_shards(train_shards: str, n_stages: int, where: str = "config") -> None:
    """Stages >= 1 draw planned batches through a tar index, which needs files it can seek in: refuse
    remote shards at config load, not after stage 0, the embedding and k-means have run for hours."""
    if n_stages < 2:
        return  # stage 0 alone streams, and streaming reads any URL webdataset opens
    parts = [p.strip() for p in train_shards.replace("\n", "::").split("::") if p.strip()]
    remote = [p for p in parts if not is_local(local_path(p))]
    if remote:
        raise ConfigError(
            f"{where}: 'data.train_shards' {remote[0]!r} is not a local path, and stages >= 1 read samples by "
            f"random access (a tar index). Copy the shards to a local disk, or mount the bucket (s3fs, gcsfuse, "
            f"rclone mount) and give the local paths; or train stage 0 only (one entry in stages)")


def lost_samples(index) -> dict[str, int]:
    """Estimated samples lost per damaged shard (see the module docstring)."""
    if not index.damaged:
        return {}
    kept = np.bincount(index.shard_ids, minlength=len(index.shards))
    intact = [kept[i] for i, s in enumerate(index.shards) if s not in index.damaged]
    typical = int(np.median(intact)) if intact else 0
    per_sample = max(1.0, len(index._offset) / max(1, len(index)))
    return {s: max(math.ceil(members / per_sample), typical - int(kept[index.shards.index(s)]), 1)
            for s, (_, members) in index.damaged.items()}


def _check_names(index) -> None:
    """Keys travel as text (embedding parts, labels): refuse names that are not UTF-8 up front."""
    try:
        np.char.decode(index.keys, "utf-8")
    except UnicodeDecodeError:
        for i, k in enumerate(index.keys.tolist()):
            try:
                k.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{index.shards[index.shard_of(i)]}: member name {k!r} is not UTF-8; sample keys "
                                "must be UTF-8 text (rewrite the shard with UTF-8 names, e.g. with "
                                "mcl-make-shards)") from None
    for e in index.extensions:  # decoded with surrogateescape: undecodable bytes became surrogates
        if any("\udc80" <= ch <= "\udcff" for ch in e):
            raise DataError(f"a member extension ({e.encode('utf-8', 'surrogateescape')!r}) in the shards is "
                            "not UTF-8; rewrite the shards with UTF-8 member names")


def sample_problems(index, image_exts: str, caption_ext: str, need_caption: bool,
                    max_member_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: a reason code (0 = fine, 1 missing_image, 2 missing_caption, 3 too_large)."""
    n = len(index)
    member_sample = np.repeat(np.arange(n), np.diff(index._start))
    names = [e.lower() for e in index.extensions]
    images = {e.strip().lower() for e in image_exts.split(";") if e.strip()}

    def has(ids) -> np.ndarray:
        out = np.zeros(n, bool)
        out[member_sample[np.isin(index._ext, ids)]] = True
        return out

    reason = np.zeros(n, np.int8)
    too_large = np.zeros(n, bool)
    if max_member_bytes > 0:
        too_large[member_sample[index._size > max_member_bytes]] = True
    reason[too_large] = 3
    if need_caption:
        reason[~has([i for i, e in enumerate(names) if e == caption_ext.lower()])] = 2
    reason[~has([i for i, e in enumerate(names) if e in images])] = 1  # decode checks the image first
    return reason, index.shard_ids


REASONS = {1: "missing_image", 2: "missing_caption", 3: "too_large"}


def check_index(index, *, image_exts: str, caption_ext: str, need_caption: bool, max_member_bytes: int,
                max_bad_fraction: float) -> dict:
    """Counts of unusable samples per reason and shard; a DataError when none (or too few) is usable."""
    _check_names(index)
    reason, shard_ids = sample_problems(index, image_exts, caption_ext, need_caption, max_member_bytes)
    reasons = Counter({REASONS[r]: int((reason == r).sum()) for r in REASONS if (reason == r).any()})
    per_shard = Counter({index.shards[s]: int(c) for s, c in enumerate(np.bincount(shard_ids[reason > 0],
                                                                                  minlength=len(index.shards))) if c})
    lost = lost_samples(index)
    if lost:
        reasons["lost_in_damaged_tar"] = sum(lost.values())
        per_shard.update(lost)
    good = int((reason == 0).sum())
    bad = sum(reasons.values())
    total = good + bad
    stats = {"samples": total, "usable": good, "bad": bad, "reasons": dict(reasons), "shards": dict(per_shard),
             "damaged": {s: index.damaged[s][0] for s in lost}}
    told = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
    worst = ", ".join(f"{s} ({n})" for s, n in per_shard.most_common(3))
    if good == 0:
        raise DataError(f"no readable sample in {len(index.shards)} shards ({told or 'the shards are empty'}); "
                        f"check data.image_ext ({image_exts!r}) and data.caption_ext ({caption_ext!r}) against "
                        f"the members of the shards" + (f"; worst shards: {worst}" if worst else ""))
    if bad > max_bad_fraction * total:
        raise DataError(f"{bad} of {total} samples are unusable before training starts "
                        f"({100 * bad / total:.1f}% > data.max_bad_fraction={100 * max_bad_fraction:.1f}%): "
                        f"{told}; worst shards: {worst}")
    return stats
