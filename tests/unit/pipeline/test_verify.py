"""Damaged data is refused before training, in one line naming the file and the fault:
a flipped byte, a truncated shard, a missing shard, a shard of another dataset, a changed
vocab. `size` checks only what a listing shows; `off` checks nothing."""
from __future__ import annotations

import shutil

import pytest

from pipeline.dataset import open_dataset, verify_files
from pipeline.errors import InputError
from tests.helpers import write_dataset


@pytest.fixture
def data(tmp_path):
    return write_dataset(tmp_path / "data", num_shards=3, rows_per_shard=40)


def refused(path, level="full") -> str:
    with pytest.raises(InputError) as e:
        verify_files(open_dataset(str(path)), level)
    msg = str(e.value)
    assert "\n" not in msg and "re-run `bertpipe prepare`" in msg
    return msg


def test_intact_data_passes_every_level(data):
    ds = open_dataset(str(data))
    full = verify_files(ds, "full")
    assert full["files"] == 4 and full["bytes"] == sum(
        p.stat().st_size for p in data.iterdir() if p.name != "manifest.json")
    assert verify_files(ds, "size")["files"] == 4
    assert verify_files(ds, "off")["files"] == 0


def test_a_flipped_byte_is_caught_by_the_checksum_only(data):
    shard = data / "shard-00001.parquet"
    body = bytearray(shard.read_bytes())
    body[len(body) // 2] ^= 0x01  # same size, one bit
    shard.write_bytes(bytes(body))
    msg = refused(data)
    assert "shard-00001.parquet" in msg and "sha256" in msg
    verify_files(open_dataset(str(data)), "size")  # sizes alone cannot see it


def test_a_truncated_shard_is_caught_by_its_size(data):
    shard = data / "shard-00002.parquet"
    full = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:full // 3])
    for level in ("size", "full"):
        msg = refused(data, level)
        assert f"shard-00002.parquet is truncated: {full // 3} bytes, the manifest records " \
               f"{full}" in msg


def test_a_missing_shard_is_named(data):
    (data / "shard-00000.parquet").unlink()
    assert "shard-00000.parquet is missing" in refused(data, "size")


def test_a_shard_of_another_dataset_is_named_as_such(data, tmp_path):
    other = write_dataset(tmp_path / "other", num_shards=3, rows_per_shard=50, seed=7)
    shutil.copy(other / "shard-00001.parquet", data / "shard-00001.parquet")
    msg = refused(data)
    assert "shard-00001.parquet: a shard of another dataset or run (50 rows, the manifest " \
           "records 40)" in msg


def test_every_bad_file_is_counted_and_the_vocab_is_checked_too(data):
    (data / "shard-00000.parquet").unlink()
    (data / "shard-00002.parquet").unlink()
    assert "(and 1 more)" in refused(data, "size")
    data2 = data.parent / "data2"
    write_dataset(data2, num_shards=2)
    with open(data2 / "vocab.txt", "a") as f:
        f.write("extra\n")
    assert "vocab.txt: its sha256 differs" in refused(data2)


def test_an_unknown_level_is_refused(data):
    with pytest.raises(InputError, match="verify_data must be one of full, size, off"):
        verify_files(open_dataset(str(data)), "fast")
