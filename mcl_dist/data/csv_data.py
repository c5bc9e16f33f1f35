"""`data.dataset_type: csv`: open_clip_train's CSV data set (`--dataset-type csv`): one text file
whose header names an image-path column (`data.csv_img_key`, default `filepath`) and a caption
column (`data.csv_caption_key`, default `title`), fields split by `data.csv_separator` (default a
tab). An image path is relative to the CSV's folder, or absolute. Any other column is kept as the
sample's `json` (the evaluation's label fields can name one).

The whole CSV is read and every image file stat'ed when the data opens, so a bad CSV (a missing
column, a missing image file, no rows, a row with the wrong number of fields) is one error naming
the file and row before anything trains; the stat'ed sizes and the CSV's bytes are the data
fingerprint. Rows are kept as UTF-8 blobs with offsets (no Python object per row): loader workers
share them copy-on-write, as they share the tar index. A sample's key is its row number (from 0,
zero-padded); its image is read only when a decoder asks for it, so a resumed stream skips rows
without reading their files.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from mcl_dist.config.origins import blame
from mcl_dist.config.schema import Config, ConfigError
from mcl_dist.data.dataset import TrainData
from mcl_dist.data.decode import BadSample
from mcl_dist.data.preflight import DataError
from mcl_dist.data.shards import is_local, local_path
from mcl_dist.data.streaming import ErrorLog
from mcl_dist.data.tar_index import key_lookup, keys_fingerprint


def separator(value: str) -> str:
    """`\\t` as typed on a command line means a tab (pandas, which open_clip uses, reads it so)."""
    return "\t" if value == "\\t" else value


class Texts:
    """Many strings as one UTF-8 blob plus offsets: item i is bytes."""

    def __init__(self, items: Sequence[str]):
        encoded = [s.encode("utf-8") for s in items]
        self.blob = b"".join(encoded)
        self.offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.blob[int(self.offsets[i]): int(self.offsets[i + 1])]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class CsvSample(Mapping):
    """A raw sample whose image bytes are read on first access; a file that cannot be read then is
    a bad sample (counted and skipped like a corrupt image), not the end of the run."""

    def __init__(self, fields: dict, image_ext: str, image_path: str):
        self.fields, self.image_ext, self.image_path = fields, image_ext, image_path
        self._image: Optional[bytes] = None

    def __getitem__(self, k: str) -> Any:
        if k != self.image_ext:
            return self.fields[k]
        if self._image is None:
            try:
                with open(self.image_path, "rb") as f:
                    self._image = f.read()
            except OSError as e:
                raise BadSample("unreadable_image", f"{self.fields['__key__']}: {e}") from e
        return self._image

    def __iter__(self) -> Iterator[str]:
        yield from self.fields
        yield self.image_ext

    def __len__(self) -> int:
        return len(self.fields) + 1


def _rows(path: str, text: str, sep: str) -> Iterator[tuple[int, int, list[str]]]:
    """(row number from 1, line number, fields) of every non-blank data row; a csv error names its line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    row = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: not a valid CSV row ({e})") from None
        if fields:  # blank lines are skipped, as pandas does
            yield row, reader.line_num, fields
            row += 1


def _read_text(path: str) -> tuple[str, str]:
    """The CSV's text and the sha256 of its bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: CSV file not found (data.train_shards)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the CSV ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM, as spreadsheet exports write, is not part of the header
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text") from None
    return text, hashlib.sha256(data).hexdigest()


class CsvTable:
    """The rows of one CSV with random access by position: what the tar index is to shards."""

    def __init__(self, path: str, *, img_key: str = "filepath", caption_key: str = "title", sep: str = "\t",
                 image_ext: str = "jpg", caption_ext: str = "txt"):
        self.path, self.columns_used = os.path.abspath(path), [img_key, caption_key, sep]
        self.image_ext, self.caption_ext = image_ext, caption_ext
        text, self.content_sha256 = _read_text(self.path)
        rows = _rows(self.path, text, sep)
        header = next(rows, None)
        if header is None:
            raise DataError(f"{self.path}: the CSV is empty; it needs a header row naming the columns "
                            f"'{img_key}' (data.csv_img_key) and '{caption_key}' (data.csv_caption_key)")
        columns = header[2]
        for key, setting in ((img_key, "data.csv_img_key (--csv-img-key)"),
                             (caption_key, "data.csv_caption_key (--csv-caption-key)")):
            if key not in columns:
                raise DataError(f"{self.path}, row 0 (the header, line {header[1]}): no column '{key}' among "
                                f"{columns}; name the column with {setting}" + _separator_hint(columns, sep))
        self._read(rows, columns, columns.index(img_key), columns.index(caption_key), sep)
        self.keys = np.array([b"%08d" % i for i in range(len(self))], dtype=bytes)
        self.shards, self.damaged = [self.path], {}  # what the data check and messages read
        self._order = np.argsort(self.keys, kind="stable")  # for key_to_index (past 10^8 rows widths differ)
        self._fingerprint: Optional[str] = None

    def _read(self, rows: Iterable, columns: list[str], img: int, cap: int, sep: str) -> None:
        folder = os.path.dirname(self.path)
        paths, captions, extras, sizes, missing = [], [], [], [], []
        other = [i for i in range(len(columns)) if i not in (img, cap)]
        for row, line, fields in rows:
            where = f"{self.path}, row {row} (line {line})"
            if len(fields) != len(columns):
                raise DataError(f"{where}: {len(fields)} fields, the header has {len(columns)}; check "
                                f"data.csv_separator ({sep!r}) and the quoting of that row")
            if not fields[img].strip():
                raise DataError(f"{where}: no image path in column '{columns[img]}'")
            path = os.path.join(folder, fields[img])  # an absolute path stays as it is
            try:
                sizes.append(os.stat(path).st_size)
            except OSError:
                missing.append((where, path))
                sizes.append(-1)
            paths.append(path)
            captions.append(fields[cap])
            extras.append(json.dumps({columns[i]: fields[i] for i in other}) if other else "")
        if missing:
            where, path = missing[0]
            more = f" (and {len(missing) - 1} more rows name missing files)" if len(missing) > 1 else ""
            raise DataError(f"{where}: image file {path} not found{more}; paths are relative to the CSV's "
                            f"folder, or absolute")
        if not paths:
            raise DataError(f"{self.path}: the CSV has a header but no rows: no sample to train on")
        self.paths, self.captions = Texts(paths), Texts(captions)
        self.extras = Texts(extras) if other else None
        self.sizes = np.asarray(sizes, np.int64)

    def __len__(self) -> int:
        return len(self.sizes)

    def identity(self) -> dict:
        """The CSV's bytes, the columns read from it and the size of every image it names."""
        return {"csv": self.path, "sha256": self.content_sha256, "columns": self.columns_used,
                "image_sizes": hashlib.sha256(self.sizes.tobytes()).hexdigest()}

    def fingerprint(self) -> str:
        """Ties labels and embeddings to these rows (as ShardIndex.fingerprint does to shards)."""
        if self._fingerprint is None:
            self._fingerprint = keys_fingerprint([self.path, self.content_sha256], self.keys)
        return self._fingerprint

    def key_to_index(self, keys) -> np.ndarray:
        """Row of each key (str or bytes), -1 for keys not in the CSV."""
        return key_lookup(self.keys, self._order, keys)

    def read_sample(self, i: int) -> CsvSample:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range (the CSV has {len(self)})")
        path = self.paths[i].decode("utf-8")
        fields = {"__key__": self.keys[i].decode(), "__url__": path, self.caption_ext: self.captions[i]}
        if self.extras is not None:
            fields["json"] = self.extras[i]
        return CsvSample(fields, self.image_ext, path)

    def close(self) -> None:
        """Nothing held open: each image is read and closed."""


def _separator_hint(columns: list[str], sep: str) -> str:
    if len(columns) == 1:
        found = next((s for s in ("\t", ",", ";", "|") if s != sep and s in columns[0]), None)
        if found:
            return f"; the header is one column: is the separator {found!r} (data.csv_separator, now {sep!r})?"
    return ""


class CsvData(TrainData):
    kind, unit = "csv", "row"

    def __init__(self, table: CsvTable):
        self.table = table
        self.units = np.arange(len(table), dtype=np.int64)

    @staticmethod
    def check(cfg: Config, where: str) -> None:
        d = cfg.data
        spec = d.train_shards.strip()
        if "::" in spec or "\n" in spec or (spec and not is_local(local_path(spec))):
            raise ConfigError(f"{blame(where, 'data.train_shards')}: 'data.train_shards' {spec!r}: a CSV data set (data.dataset_type csv) is one "
                              f"local file")
        if len(separator(d.csv_separator)) != 1:
            raise ConfigError(f"{blame(where, 'data.csv_separator')}: 'data.csv_separator' must be one character, got {d.csv_separator!r}")
        for key in ("csv_img_key", "csv_caption_key"):
            if not getattr(d, key):
                raise ConfigError(f"{blame(where, 'data.' + key)}: 'data.{key}' is empty; name a column of the CSV's "
                                  f"header")

    @classmethod
    def from_config(cls, cfg: Config) -> "CsvData":
        d = cfg.data
        image_ext = next(e.strip() for e in d.image_ext.split(";") if e.strip())  # decoders look it up
        return cls(CsvTable(local_path(d.train_shards.strip()), img_key=d.csv_img_key, caption_key=d.csv_caption_key,
                            sep=separator(d.csv_separator), image_ext=image_ext, caption_ext=d.caption_ext))

    def read(self, units: Sequence, errors: ErrorLog) -> Iterator[dict]:
        return (self.table.read_sample(i) for i in units)

    def identity(self) -> dict:
        return self.table.identity()

    def num_samples(self) -> int:
        return len(self.table)

    def plan(self) -> dict[str, Any]:
        return {"units": len(self.table), "samples": len(self.table), "source": f"rows of {self.table.path}"}

    def index(self, cache_dir: str, progress: bool = False) -> CsvTable:
        return self.table

    def check_samples(self, index, data_cfg, need_caption: bool) -> dict:
        """Images over data.max_member_bytes and empty captions, counted as a tar's would be."""
        t, d = self.table, data_cfg
        too_large = (t.sizes > d.max_member_bytes) if d.max_member_bytes > 0 else np.zeros(len(t), bool)
        no_caption = (t.captions.lengths() == 0) & ~too_large if need_caption else np.zeros(len(t), bool)
        reasons = {r: int(m.sum()) for r, m in (("too_large", too_large), ("missing_caption", no_caption)) if m.any()}
        bad = sum(reasons.values())
        if bad == len(t) or bad > d.max_bad_fraction * len(t):
            first = int(np.flatnonzero(too_large | no_caption)[0]) + 1  # rows count from 1, the header is row 0
            limit = "none is usable" if bad == len(t) else f"> data.max_bad_fraction={100 * d.max_bad_fraction:.1f}%"
            raise DataError(f"{t.path}: {bad} of {len(t)} rows are unusable ({reasons}; the first is row {first}): "
                            f"{limit} (images over data.max_member_bytes={d.max_member_bytes}, empty captions)")
        return {"samples": len(t), "usable": len(t) - bad, "bad": bad, "reasons": reasons,
                "shards": {t.path: bad} if bad else {}, "damaged": {}}

    def check_world(self, world: int, stage0_trains: bool) -> None:
        if stage0_trains and len(self.table) < world:
            raise DataError(f"{self.table.path}: {len(self.table)} rows for {world} ranks; stage 0 gives every rank "
                            f"its own rows, so it needs at least {world}. Run with at most {len(self.table)} ranks")

    def describe(self) -> str:
        return f"{len(self.table)} rows of {self.table.path}"
