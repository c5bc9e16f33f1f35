"""Random-access index of webdataset tar shards (stages >= 1 read the batches the sampler plans).

The index is built from tar headers only: we parse each 512-byte header ourselves and jump over
the member data, which is several times faster than `tarfile` and never reads image bytes, so
CC12M's ~1,200 shards index in minutes. Samples follow webdataset's grouping rule (consecutive
members sharing the path up to the first dot of the basename), so index order and content equal
a sequential webdataset read.

Everything is kept in flat numpy arrays (CSR layout: sample i owns member rows
`member_start[i]:member_start[i+1]`), a few integers per member, no per-sample Python objects:
DataLoader workers share the arrays copy-on-write after fork.

Cache: one npz per shard, named by a hash of the absolute path and holding that path, the
shard's size and mtime_ns. A stale or foreign cache file is rebuilt, never mixed in. Each file is
written atomically as soon as its shard is scanned, so a killed build resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing as mp
import os
import re
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Optional

import numpy as np

from mcl_dist.core.files import load_npz, save_npz
from mcl_dist.core.progress import track
from mcl_dist.data.shards import is_local, local_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1
BLOCK = 512
_CHUNK = 1 << 16  # headers of small members (txt, json) usually fall in one read
_REGULAR = (b"0", b"\0", b"7")
_META = re.compile(rb"__[^/]*__($|/)")  # webdataset's skip_meta
_KEY_EXT = re.compile(rb"^((?:.*/|)[^.]+)[.]([^/]*)$", re.DOTALL)  # webdataset's base_plus_ext


def _local(url: str) -> str:
    if not is_local(local_path(url)):
        raise ValueError(
            f"{url}: random access needs local files. Stages >= 1 read samples through a tar index, "
            "so the shards must be on a local or mounted filesystem: copy them or mount them "
            "(e.g. with a FUSE mount of the bucket) and pass the local paths.")
    path = os.path.abspath(local_path(url))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: shard not found")
    return path


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for members >= 8 GiB
        return int.from_bytes(field[1:], "big")
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _header_ok(block: bytes) -> bool:
    try:
        stored = _octal(block[148:156])
    except ValueError:
        return False
    return stored == sum(block[:148]) + 256 + sum(block[156:])


def scan_tar(path: str) -> dict:
    """Parse one tar's headers: sample keys and, per member, (ext, data offset, size).

    A damaged tar (cut short, corrupt header) keeps every sample completed before the damage;
    the sample in progress at the damage is dropped, since we cannot know it was complete.
    """
    keys, mstart, mext, moff, msize = [], [], [], [], []
    fsize = os.path.getsize(path)
    off, buf_at, buf = 0, 0, b""
    long_name = pax_name = pax_size = None
    damage = ""
    fd = os.open(path, os.O_RDONLY)

    def read(at: int, n: int) -> bytes:
        nonlocal buf_at, buf
        if at < buf_at or at + n > buf_at + len(buf):
            buf_at, buf = at, os.pread(fd, max(n, _CHUNK), at)
        return buf[at - buf_at: at - buf_at + n]

    try:
        while True:
            block = read(off, BLOCK)
            if len(block) < BLOCK:
                damage = f"ends inside a header at byte {off}" if block else "has no end-of-archive marker"
                break
            if block == b"\0" * BLOCK:
                break  # end-of-archive marker: a complete tar
            if not _header_ok(block):
                damage = f"has a corrupt header at byte {off}"
                break
            size = _octal(block[124:136]) if pax_size is None else pax_size
            kind, data = block[156:157], off + BLOCK
            if data + size > fsize:
                damage = f"is cut inside the data of the member at byte {off}"
                break
            off = data + (size + BLOCK - 1) // BLOCK * BLOCK
            if kind in (b"L", b"x"):  # GNU long name / pax extended header apply to the next member
                raw = read(data, size)
                if kind == b"L":
                    long_name = raw.split(b"\0", 1)[0]
                for k, v in re.findall(rb"\d+ ([^=]+)=(.*?)\n", raw, re.DOTALL) if kind == b"x" else ():
                    if k == b"path":
                        pax_name = v
                    elif k == b"size":
                        pax_size = int(v)
                continue
            name = block[:100].split(b"\0", 1)[0]
            if block[257:265] == b"ustar\x0000" and block[345] != 0:
                name = block[345:500].split(b"\0", 1)[0] + b"/" + name
            name = pax_name or long_name or name
            long_name = pax_name = pax_size = None
            if kind not in _REGULAR or (b"/" not in name and name.startswith(b"__") and name.endswith(b"__")):
                continue
            m = None if _META.match(name) else _KEY_EXT.match(name)
            if m is None:
                continue  # webdataset skips names without an extension too
            key, ext = m.group(1), m.group(2).lower()
            if not keys or key != keys[-1]:
                keys.append(key)
                mstart.append(len(moff))
            elif ext in mext[mstart[-1]:]:  # webdataset refuses the duplicate too; keep the first
                log.warning("%s: duplicate member %s ignored", path, name.decode("utf-8", "replace"))
                continue
            mext.append(ext)
            moff.append(data)
            msize.append(size)
    finally:
        os.close(fd)
    lost = 0
    if damage:
        seen = len(moff)
        if keys:  # drop the sample in progress at the damage: it may be incomplete
            keys.pop()
            del mext[mstart[-1]:], moff[mstart[-1]:], msize[mstart[-1]:]
            mstart.pop()
        # what lay after a cut is unknowable (so this undercounts then); bytes left after a
        # corrupt header are converted to members with the mean member footprint
        lost = max(1, seen - len(moff) + (round((fsize - off) * seen / off) if seen else 0))
    vocab = sorted(set(mext))
    ext_id = {e: i for i, e in enumerate(vocab)}
    return dict(keys=np.array(keys, dtype=bytes) if keys else np.zeros(0, "S1"),
                member_start=np.array(mstart + [len(moff)], np.int64),
                member_ext=np.array([ext_id[e] for e in mext], np.int16),
                member_offset=np.array(moff, np.int64), member_size=np.array(msize, np.int64),
                ext_vocab=np.array(vocab, dtype=bytes) if vocab else np.zeros(0, "S1"),
                damage=np.array(damage), lost_members=np.array(lost, np.int64))


def _cache_path(cache_dir: str, path: str) -> str:
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}.idx.npz")


def _shard_entry(path: str, cache_dir: str, rebuild: bool) -> tuple[dict, str]:
    """Cached index of one shard, validated against the file; rescanned when stale or foreign."""
    cache = _cache_path(cache_dir, path)
    st = os.stat(path)  # taken before the scan: a file changed during the scan looks stale next time
    why = "rebuild requested" if rebuild else "no cache"
    if not rebuild and os.path.exists(cache):
        try:
            entry = load_npz(cache)
            if int(entry["version"]) != CACHE_VERSION:
                why = "cache format changed"
            elif str(entry["shard_path"]) != path:
                why = f"cache file belongs to another shard ({entry['shard_path']})"
            elif (int(entry["size"]), int(entry["mtime_ns"])) != (st.st_size, st.st_mtime_ns):
                why = "shard changed since it was indexed (size or mtime differ)"
            else:
                return entry, "cached"
        except (RuntimeError, KeyError) as e:
            why = f"unreadable cache ({e})"
        log.warning("%s: re-indexing: %s", path, why)
    entry = scan_tar(path)
    entry.update(version=np.array(CACHE_VERSION), shard_path=np.array(path),
                 size=np.array(st.st_size, np.int64), mtime_ns=np.array(st.st_mtime_ns, np.int64))
    save_npz(cache, **entry)
    return entry, why


def build_or_load_index(shards: list[str], cache_dir: str, *, rebuild: bool = False,
                        progress: bool = True, workers: int = 1) -> "ShardIndex":
    """Index local tar shards (cached per shard in cache_dir); see the module docstring."""
    if not shards:
        raise ValueError("no shards to index")
    paths = [_local(s) for s in shards]  # remote URLs fail here, before any work
    os.makedirs(cache_dir, exist_ok=True)
    t0, n = time.time(), len(paths)
    with contextlib.ExitStack() as stack:
        if workers > 1:  # spawn, not fork: the caller may hold CUDA or process-group state
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")))
            it = pool.map(_shard_entry, paths, [cache_dir] * n, [rebuild] * n)
        else:
            it = (_shard_entry(p, cache_dir, rebuild) for p in paths)
        results = list(track(it, n, desc="indexing shards", unit="shard", enabled=progress))
    index = ShardIndex(list(shards), paths, [e for e, _ in results])
    built = sum(why != "cached" for _, why in results)
    for shard, (msg, _) in index.damaged.items():
        # no count here: the loss is estimated once, in samples, by the data check (data_report.json)
        log.warning("%s: damaged tar: it %s; indexed the complete samples before the damage; the members lost "
                    "are counted as samples by the data check before training", shard, msg)
    log.info("indexed %d shards (%d scanned, %d from cache, %d damaged): %d samples in %.1fs",
             len(paths), built, len(paths) - built, len(index.damaged), len(index), time.time() - t0)
    return index


def keys_fingerprint(shard_list: list[str], keys) -> str:
    """sha256 of shard basenames and key order (str or bytes keys give the same digest)."""
    h = hashlib.sha256()
    h.update("\n".join(os.path.basename(p) for p in shard_list).encode() + b"\n\n")
    keys = [k if isinstance(k, bytes) else str(k).encode("utf-8") for k in np.asarray(keys).tolist()]
    chunk = 1 << 20
    for lo in range(0, len(keys), chunk):
        h.update(b"\n".join(keys[lo: lo + chunk]) + b"\n")
    return h.hexdigest()


def key_lookup(known: np.ndarray, order: np.ndarray, keys: Iterable) -> np.ndarray:
    """Position in `known` (bytes keys; `order` sorts them) of each key (str or bytes), -1 if absent."""
    q = np.asarray(keys if isinstance(keys, np.ndarray) else list(keys))
    if q.dtype.kind == "U":
        q = np.char.encode(q, "utf-8")
    if len(known) == 0 or q.size == 0:
        return np.full(q.shape, -1, np.int64)
    cand = order[np.minimum(np.searchsorted(known, q, sorter=order), len(known) - 1)]
    return np.where(known[cand] == q, cand, -1).astype(np.int64)


class ShardIndex:
    """All samples of a shard list, in webdataset order, with random access to their bytes."""

    max_open = 64  # open shard files per process (LRU): 1,200 shards x workers would exhaust fds

    def __init__(self, shards: list[str], paths: list[str], entries: list[dict]):
        self.shards, self._paths = shards, paths
        n = np.array([len(e["keys"]) for e in entries], np.int64)
        self.keys = np.concatenate([e["keys"] for e in entries]) if entries else np.zeros(0, "S1")
        self.shard_ids = np.repeat(np.arange(len(entries), dtype=np.int32), n)
        vocab = sorted({bytes(v) for e in entries for v in e["ext_vocab"]})
        self.extensions = [v.decode("utf-8", "surrogateescape") for v in vocab]
        vocab_arr, ext_t = np.array(vocab, dtype=bytes), np.uint8 if len(vocab) < 256 else np.uint16
        self._ext = np.concatenate([np.zeros(0, ext_t)] + [  # shard-local ext ids -> global ids
            np.searchsorted(vocab_arr, e["ext_vocab"]).astype(ext_t)[e["member_ext"]]
            for e in entries if len(e["member_ext"])])
        self._offset = np.concatenate([e["member_offset"] for e in entries])
        self._size = np.concatenate([e["member_size"] for e in entries])
        base = np.cumsum([0] + [len(e["member_offset"]) for e in entries])
        self._start = np.concatenate([e["member_start"][:-1] + b for e, b in zip(entries, base)] + [base[-1:]])
        self._stat = [(int(e["size"]), int(e["mtime_ns"])) for e in entries]
        self.damaged = {s: (str(e["damage"]), int(e["lost_members"]))
                        for s, e in zip(shards, entries) if str(e["damage"])}
        # key order, for the duplicate check and vectorised key lookup (int32: half the memory)
        self._order = np.argsort(self.keys, kind="stable").astype(np.int32 if len(self) < 2**31 else np.int64)
        ordered = self.keys[self._order]
        dup = np.flatnonzero(ordered[1:] == ordered[:-1])
        del ordered
        if dup.size:
            i, j = sorted(self._order[dup[0]: dup[0] + 2])
            raise ValueError(f"duplicate sample key {self.keys[i].decode(errors='replace')!r} in "
                             f"{shards[self.shard_ids[i]]} and {shards[self.shard_ids[j]]}: "
                             "keys must be unique across the shard list")
        self._fingerprint: Optional[str] = None
        self._files: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def shard_of(self, i: int) -> int:
        """Shard id (position in `shards`) of sample i."""
        return int(self.shard_ids[i])

    def fingerprint(self) -> str:
        """sha256 of shard basenames and sample keys, in order: ties labels/embeddings to data."""
        if self._fingerprint is None:
            self._fingerprint = keys_fingerprint(self._paths, self.keys)
        return self._fingerprint

    def key_to_index(self, keys: Iterable) -> np.ndarray:
        """Sample index of each key (str or bytes), -1 for keys not in the index."""
        return key_lookup(self.keys, self._order, keys)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked (DataLoader worker): never share the parent's handles
            for fd in self._files.values():
                os.close(fd)
            self._files, self._pid = OrderedDict(), os.getpid()
        fd = self._files.get(shard)
        if fd is not None:
            self._files.move_to_end(shard)
            return fd
        fd = os.open(self._paths[shard], os.O_RDONLY)
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != self._stat[shard]:
            os.close(fd)
            raise RuntimeError(f"{self._paths[shard]} changed since it was indexed; "
                               "build the index again (it re-indexes changed shards)")
        self._files[shard] = fd
        while len(self._files) > self.max_open:
            os.close(self._files.popitem(last=False)[1])
        return fd

    def read_sample(self, i: int) -> dict:
        """Raw webdataset-style sample: {'__key__', '__url__', ext: bytes, ...}."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range (index has {len(self)})")
        shard, a, b = int(self.shard_ids[i]), int(self._start[i]), int(self._start[i + 1])
        lo, hi = int(self._offset[a]), int(self._offset[b - 1] + self._size[b - 1])
        data = os.pread(self._fd(shard), hi - lo, lo)  # one read: a sample's members are contiguous
        if len(data) != hi - lo:
            raise RuntimeError(f"{self._paths[shard]}: short read at byte {lo}; the file changed?")
        sample = {"__key__": self.keys[i].decode("utf-8", "surrogateescape"), "__url__": self.shards[shard]}
        for m in range(a, b):
            o = int(self._offset[m]) - lo
            sample[self.extensions[self._ext[m]]] = data[o: o + int(self._size[m])]
        return sample

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._files.values():
                os.close(fd)
        self._files = OrderedDict()

    def __getstate__(self) -> dict:  # pickled into spawned workers: handles stay behind
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
