"""`bertpipe pretrain` refuses damaged data on the driver, before Ray or any worker starts:
one line naming the file and the fault, exit code 2, no advice to rerun (rerunning cannot
fix a file). `--verify-data size` skips the checksums, `off` every check."""
from __future__ import annotations

import pytest

import jobs.pretrain.driver
from tests.helpers import job, write_dataset


@pytest.fixture
def data(tmp_path, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for data that should have been refused")
    monkeypatch.setattr(jobs.pretrain.driver, "ray_session", no_ray)
    return write_dataset(tmp_path / "data", num_shards=4, rows_per_shard=40)


def pretrain(data, *extra) -> int:
    return job("pretrain")(["--data", str(data), "--model", "bert-tiny", "--num-workers", "2",
                            "--batch-size", "8", "--max-seq-length", "64",
                            "--storage-path", str(data.parent / "ckpt"), *extra])


def refused_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    line = err[-1]
    assert line.startswith("bertpipe: error: --data ") and "rerun" not in line
    return line


@pytest.mark.parametrize("fault, expected", [
    ("flip", "shard-00002.parquet: "),
    ("truncate", "shard-00002.parquet is truncated: "),
    ("delete", "shard-00002.parquet is missing"),
    ("foreign", "shard-00002.parquet: a shard of another dataset or run (50 rows, the "
                "manifest records 40)"),
])
def test_a_damaged_shard_is_refused_before_any_worker_starts(fault, expected, data, tmp_path,
                                                             capsys):
    shard = data / "shard-00002.parquet"
    if fault == "flip":
        body = bytearray(shard.read_bytes())
        body[len(body) // 2] ^= 0x40
        shard.write_bytes(bytes(body))
    elif fault == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif fault == "delete":
        shard.unlink()
    else:
        other = write_dataset(tmp_path / "other", num_shards=4, rows_per_shard=50, seed=9)
        shard.write_bytes((other / shard.name).read_bytes())
    assert pretrain(data) == 2
    assert expected in refused_line(capsys)


def test_size_checks_skip_the_checksums_and_off_skips_everything(data, capsys):
    shard = data / "shard-00001.parquet"
    body = bytearray(shard.read_bytes())
    body[100] ^= 0x01
    shard.write_bytes(bytes(body))
    # sizes alone cannot see a flipped byte: the checks pass and the job goes on to start Ray
    with pytest.raises(AssertionError, match="Ray was started"):
        pretrain(data, "--verify-data", "size")
    (data / "shard-00003.parquet").unlink()
    assert pretrain(data, "--verify-data", "size") == 2
    assert "shard-00003.parquet is missing" in refused_line(capsys)
    with pytest.raises(AssertionError, match="Ray was started"):
        pretrain(data, "--verify-data", "off")
