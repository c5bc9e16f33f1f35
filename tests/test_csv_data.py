"""The CSV data source (open_clip's `--dataset-type csv`): reading the CSV (relative and absolute
image paths, the separator, quoting), the errors a bad CSV gives (one line naming the file and
row), its fingerprint, the `data.dataset_type` switch, and its streams: every row once per pass
over the ranks and workers, every row once over the embedding's ranks, a resumed stream exactly
the uninterrupted one."""
import os

import numpy as np
import pytest
import torch

from mcl_dist.config.load import load_config
from mcl_dist.config.schema import ConfigError
from mcl_dist.data.csv_data import CsvData, CsvTable
from mcl_dist.data.dataset_types import open_data, resolve_type
from mcl_dist.data.preflight import DataError
from mcl_dist.data.streaming import ErrorLog, ShardStream, make_loader, raw_samples
from mcl_dist.data.webdataset_data import WebDatasetData

from conftest import ROOT, write_test_shards
import forked_ranks
from csv_helpers import shards_to_csv
from test_streaming import collect, decode


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A CSV of 24 samples (every third path absolute) beside the shards it was made from."""
    d = tmp_path_factory.mktemp("csv")
    shards = write_test_shards(str(d / "shards"), n_shards=2, per_shard=12)
    return shards, shards_to_csv(shards, str(d / "csv"), absolute_every=3)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_rows_read_as_the_shards_samples_relative_and_absolute_paths(data_dir):
    shards, csv_path = data_dir
    lines = open(csv_path).read().splitlines()
    assert lines[0] == "filepath\ttitle\tcolor\tshape"
    assert lines[1].startswith("images/s000000.png\t") and lines[3].startswith(os.path.dirname(csv_path) + "/")
    table = CsvTable(csv_path)
    tars = list(raw_samples(shards, ErrorLog()))
    assert len(table) == len(tars) == 24
    for i in (0, 2, 23):  # relative, absolute, relative
        row = table.read_sample(i)
        assert row["__key__"] == f"{i:08d}" and row["jpg"] == tars[i]["png"] and row["txt"] == tars[i]["txt"]
        assert row["json"] == tars[i]["json"]  # the other columns: what the evaluation's label fields read
    assert table.key_to_index(["00000005", b"00000023", "nope"]).tolist() == [5, 23, -1]


def test_separator_and_quoted_fields(tmp_path, data_dir):
    _, csv_path = data_dir
    image = os.path.join(os.path.dirname(csv_path), "images", "s000000.png")
    text = f'filepath,title\n{image},"a red square, small"\n'
    table = CsvTable(write(tmp_path / "c.csv", text), sep=",")
    assert table.read_sample(0)["txt"] == b"a red square, small"
    with pytest.raises(DataError) as e:  # read with the default tab, the header is one column
        CsvTable(str(tmp_path / "c.csv"))
    assert "the header is one column: is the separator ','" in str(e.value)
    # a separator typed as \t on a command line means a tab (open_clip's pandas reads it so)
    cfg = load_config(None, [f"data.train_shards={csv_path}", "data.csv_separator=\\t"])
    assert len(open_data(cfg).units) == 24


@pytest.mark.parametrize("text,message", [
    ("", "{p}: the CSV is empty; it needs a header row naming the columns 'filepath' (data.csv_img_key) and "
         "'title' (data.csv_caption_key)"),
    ("path\ttitle\nx.png\ta\n", "{p}, row 0 (the header, line 1): no column 'filepath' among ['path', 'title']; "
                               "name the column with data.csv_img_key (--csv-img-key)"),
    ("filepath\tcaption\nx.png\ta\n", "{p}, row 0 (the header, line 1): no column 'title' among"),
    ("filepath\ttitle\n", "{p}: the CSV has a header but no rows: no sample to train on"),
    ("filepath\ttitle\nIMG\ta\nmissing.png\tb\nalso.png\tc\n",
     "{p}, row 2 (line 3): image file {d}/missing.png not found (and 1 more rows name missing files)"),
    ("filepath\ttitle\nIMG\ta\tb\n", "{p}, row 1 (line 2): 3 fields, the header has 2; check data.csv_separator"),
])
def test_a_bad_csv_is_one_error_naming_the_file_and_row(tmp_path, data_dir, text, message):
    image = os.path.join(os.path.dirname(data_dir[1]), "images", "s000000.png")
    path = write(tmp_path / "bad.csv", text.replace("IMG", image))
    with pytest.raises(DataError) as e:
        CsvTable(path)
    assert str(e.value).startswith(message.format(p=path, d=tmp_path)), str(e.value)


def test_a_bad_csv_stops_the_launch_with_one_error_line(tmp_path):
    """Through the real entry point (its dry run): one `error:` line, no traceback."""
    csv_path = write(tmp_path / "d" / "data.csv", "filepath\ttitle\nimages/gone.png\ta\n")
    cfg = write(tmp_path / "cfg.yaml", f"data: {{train_shards: {csv_path}}}\n")
    proc = forked_ranks.python([os.path.join(ROOT, "launch/pretrain.py"), "--config", cfg, "--dry-run"],
                               timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {csv_path}, row 1 (line 2): image file {tmp_path}/d/images/gone.png not found; "
                      f"paths are relative to the CSV's folder, or absolute"]
    assert "Traceback" not in proc.stderr


def test_fingerprint_follows_the_csv_and_the_image_sizes(tmp_path, data_dir):
    shards, _ = data_dir
    csv_path = shards_to_csv(shards[:1], str(tmp_path))
    first = CsvTable(csv_path).identity()
    assert CsvTable(csv_path).identity() == first
    with open(os.path.join(tmp_path, "images", "s000003.png"), "ab") as f:
        f.write(b"\0")  # an image rewritten with another size
    assert CsvTable(csv_path).identity()["image_sizes"] != first["image_sizes"]
    assert CsvTable(csv_path, caption_key="color").identity() != first  # other columns read
    # tar shards keep the fingerprint material of runs made before the data-source interface
    st = os.stat(shards[0])
    assert WebDatasetData(shards[0]).identity() == {"shards": [[os.path.abspath(shards[0]), st.st_size, st.st_mtime_ns]]}


def test_dataset_type_switch(data_dir):
    shards, csv_path = data_dir
    assert resolve_type(load_config(None, [f"data.train_shards={csv_path}"])) == "csv"
    assert resolve_type(load_config(None, [f"data.train_shards={shards[0]}"])) == "webdataset"
    cfg = load_config(None, [f"data.train_shards={csv_path}", "data.dataset_type=csv"])
    assert isinstance(open_data(cfg), CsvData)
    with pytest.raises(ConfigError, match="'data.dataset_type' must be one of webdataset, csv, auto, got 'files'"):
        load_config(None, [f"data.train_shards={csv_path}", "data.dataset_type=files"])
    with pytest.raises(ConfigError, match="a CSV data set .* is one local file"):
        load_config(None, [f"data.train_shards={csv_path}::{csv_path}"])
    with pytest.raises(ConfigError, match="'data.csv_separator' must be one character, got 'ab'"):
        load_config(None, [f"data.train_shards={csv_path}", "data.csv_separator=ab"])


def test_stream_serves_every_row_once_per_pass_over_ranks_and_workers(data_dir):
    data = CsvData(CsvTable(data_dir[1]))
    passes = {0: [], 1: []}
    for rank in (0, 1):
        # 12 rows a pass per rank, 6 per worker: two batches of 3 per worker and pass, taken in turn
        stream = ShardStream(data.units, decode, batch_size=3, rank=rank, world=2, seed=5, shuffle_buffer=8,
                             infinite=True, read=data.read)
        keys = []
        for batch in make_loader(stream, 2):
            keys += batch["key"]
            if len(keys) >= 24:  # two passes of this rank's 12 rows
                break
        passes[0] += keys[:12]
        passes[1] += keys[12:24]
    for p in (0, 1):
        assert sorted(passes[p]) == [f"{i:08d}" for i in range(24)]  # every row once, on one rank
    assert passes[0] != passes[1]  # each pass deals the rows afresh


def test_embedding_shares_cover_every_row_once(data_dir):
    data = CsvData(CsvTable(data_dir[1]))
    seen = []
    for rank in range(5):  # 24 rows over 5 ranks: shares differ in size
        mine = data.embed_share(rank, 5)
        keys, *_ = collect(ShardStream(mine, decode, batch_size=5, rank=0, world=1, seed=None, infinite=False,
                                       read=data.read), workers=2)
        seen += keys
    assert sorted(seen) == [f"{i:08d}" for i in range(24)]


def test_resumed_stream_continues_exactly_without_reading_the_skipped_images(data_dir, monkeypatch):
    data = CsvData(CsvTable(data_dir[1]))
    kw = dict(batch_size=4, rank=1, world=2, seed=3, shuffle_buffer=8, infinite=True, read=data.read)
    full = [b for _, b in zip(range(8), make_loader(ShardStream(data.units, decode, **kw), 0))]
    cut = 3
    positions = {full[cut - 1]["meta"]["worker"]: full[cut - 1]["meta"]["raw_pos"]}
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    tail = [b for _, b in zip(range(5), make_loader(ShardStream(data.units, decode, start_positions=positions, **kw), 0))]
    for a, b in zip(full[cut:], tail):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
    assert len(opened) == 5 * 4  # the replayed rows were skipped unread


def test_csv_data_check_counts_oversized_images(tmp_path, data_dir):
    csv_path = shards_to_csv(data_dir[0][:1], str(tmp_path))  # 12 rows
    for key in ("s000004", "s000007"):  # two images made larger than the others
        with open(os.path.join(tmp_path, "images", f"{key}.png"), "ab") as f:
            f.write(b"\0" * 4096)
    cfg = load_config(None, [f"data.train_shards={csv_path}"])
    data = open_data(cfg)
    stats = data.check_samples(data.index(""), cfg.data, need_caption=True)
    assert stats == {"samples": 12, "usable": 12, "bad": 0, "reasons": {}, "shards": {}, "damaged": {}}
    cfg.data.max_member_bytes, cfg.data.max_bad_fraction = int(np.sort(data.table.sizes)[-3]), 0.5
    stats = data.check_samples(data.index(""), cfg.data, need_caption=True)
    assert stats["bad"] == 2 and stats["reasons"] == {"too_large": 2} and stats["usable"] == 10
    cfg.data.max_bad_fraction = 0.1
    with pytest.raises(DataError, match=r"2 of 12 rows are unusable \({'too_large': 2}; the first is row 5\): "
                                        r"> data.max_bad_fraction=10.0%"):
        data.check_samples(data.index(""), cfg.data, need_caption=True)


def test_unreadable_image_is_a_bad_sample(tmp_path, data_dir):
    """An image removed after the CSV was checked: counted and skipped, the stream goes on."""
    csv_path = shards_to_csv(data_dir[0][:1], str(tmp_path))  # 12 rows
    data = CsvData(CsvTable(csv_path))
    os.remove(os.path.join(tmp_path, "images", "s000002.png"))
    keys, bad, reasons, _, _ = collect(ShardStream(data.units, decode, batch_size=4, rank=0, world=1, seed=None,
                                                   infinite=False, read=data.read))
    assert bad == 1 and reasons == {"unreadable_image": 1}
    assert len(keys) == 11 and "00000002" not in keys
