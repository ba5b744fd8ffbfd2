"""`bertpipe prepare` end to end: real Wikipedia text, local Ray, moto S3, bad input, reruns."""
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.prepare import prepare as prepare_job
from pipeline.config import PrepareConfig
from pipeline.errors import InputError
from pipeline.schema import instance_schema, length_bin
from tests.helpers import job

main = job("prepare")


def prepare(cfg: PrepareConfig) -> dict:
    """The job's manifest, as the JSON it writes."""
    return prepare_job(cfg).to_dict()


pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, wiki_jsonl):
    """The first 1,500 Wikipedia lead sections, split across two files (one gzipped)."""
    lines = wiki_jsonl.read_text().splitlines()[:1500]
    d = tmp_path_factory.mktemp("corpus")
    (d / "part-0.jsonl").write_text("\n".join(lines[:700]) + "\n")
    (d / "part-1.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines[700:]) + "\n").encode()))
    return d


def _cfg(corpus, out, vocab, **kw):
    base = dict(input=[str(corpus)], output=str(out), format="jsonl", vocab=str(vocab),
                dupe_factor=2, num_shards=4, max_seq_length=128, bin_size=32)
    base.update(kw)
    return PrepareConfig(**base)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_output(out: Path, manifest: dict, vocab_size: int, cls_id: int, sep_id: int):
    assert json.loads((out / "manifest.json").read_text()) == manifest
    rows = [s["rows"] for s in manifest["shards"]]
    assert max(rows) - min(rows) <= 1 and sum(rows) == manifest["counts"]["instances"]
    bins = sorted({b for s in manifest["shards"] for b in s["rows_per_bin"]}, key=int)
    for b in bins:
        per = [s["rows_per_bin"].get(b, 0) for s in manifest["shards"]]
        assert max(per) - min(per) <= 1
    for s in manifest["shards"]:
        path = out / s["file"]
        assert _sha(path) == s["sha256"]
        table = pq.read_table(path)
        assert table.schema.equals(instance_schema(vocab_size))  # the contract, exactly
        n = table.column("num_tokens").to_numpy().astype(int)
        assert list(n) == [len(x) for x in table.column("input_ids").to_pylist()]
        assert (np.diff(length_bin(n, 32)) >= 0).all()  # ordered by length bin
        assert n.max() <= 128
        for row in table.slice(0, 50).to_pylist():
            ids = row["input_ids"]
            assert ids[0] == cls_id and ids[-1] == sep_id
            assert ids[row["segment_b_start"] - 1] == sep_id
    assert (out / "vocab.txt").read_bytes() and not (out / "_work").exists()


@pytest.mark.timeout(600)
def test_prepare_real_corpus_on_local_ray_is_balanced_binned_and_matches_in_process(
        ray_local, corpus, bert_vocab, tmp_path, capfd):
    # on Ray, each file cut into parts of ≈ 60 kB (the gzipped one too) read in parallel
    manifest = prepare(_cfg(corpus, tmp_path / "ray", bert_vocab, executor="ray",
                            split_bytes=60_000))
    # the driver's own progress lines, not Ray Data's plan and bar notices for every pass
    err = capfd.readouterr().err
    assert "[prepare] " in err
    for line in ("Execution plan of Dataset", "execution finished", "Progress bars disabled"):
        assert line not in err, line
    _check_output(tmp_path / "ray", manifest, 30522, 101, 102)
    c = manifest["counts"]
    assert c["documents"] == 1500 and c["instances"] > 1000
    assert 0.13 < c["masked_tokens"] / c["tokens"] < 0.16
    assert {i["path"].rsplit("/", 1)[1] for i in manifest["inputs"]} == \
        {"part-0.jsonl", "part-1.jsonl.gz"}
    for i in manifest["inputs"]:
        assert i["sha256"] == _sha(i["path"]) and i["size"] == os.path.getsize(i["path"])
    # The same job in this process, one pass after another, each file read whole:
    # byte-identical shards.
    local = prepare(_cfg(corpus, tmp_path / "local", bert_vocab, executor="local"))
    assert [s["sha256"] for s in local["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert local["counts"] == manifest["counts"] and local["inputs"] == manifest["inputs"]


@pytest.mark.timeout(300)
@pytest.mark.beside
def test_same_seed_gives_same_bytes_and_other_seed_other_masks(corpus, bert_vocab, tmp_path):
    a = prepare(_cfg(corpus, tmp_path / "a", bert_vocab, executor="local", dupe_factor=1))
    b = prepare(_cfg(corpus, tmp_path / "b", bert_vocab, executor="local", dupe_factor=1))
    c = prepare(_cfg(corpus, tmp_path / "c", bert_vocab, executor="local", dupe_factor=1,
                     random_seed=7))
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert set(s["sha256"] for s in a["shards"]).isdisjoint(s["sha256"] for s in c["shards"])
    ta = pq.read_table(tmp_path / "a" / "shard-00000.parquet")
    tc = pq.read_table(tmp_path / "c" / "shard-00000.parquet")
    assert ta.column("masked_lm_positions").to_pylist()[:20] != \
        tc.column("masked_lm_positions").to_pylist()[:20]


@pytest.mark.timeout(300)
@pytest.mark.beside
def test_rerun_reuses_refuses_or_overwrites(corpus, bert_vocab, tmp_path, capsys):
    out = tmp_path / "o"
    first = prepare(_cfg(corpus, out, bert_vocab, executor="local", dupe_factor=1))
    mtime = (out / "manifest.json").stat().st_mtime_ns
    again = prepare(_cfg(corpus, out, bert_vocab, executor="local", dupe_factor=1))
    assert again == first and (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(InputError, match="--overwrite"):
        prepare(_cfg(corpus, out, bert_vocab, executor="local", dupe_factor=1, random_seed=1))
    other = prepare(_cfg(corpus, out, bert_vocab, executor="local", dupe_factor=1,
                         random_seed=1, overwrite=True))
    assert other["config"]["random_seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == \
        ["manifest.json", *[f"shard-0000{i}.parquet" for i in range(4)], "vocab.txt"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        prepare(_cfg(corpus, foreign, bert_vocab, executor="local"))


@pytest.mark.timeout(300)
@pytest.mark.beside
def test_killed_job_leaves_no_manifest_and_rerun_completes(corpus, bert_vocab, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jobs.prepare", "--input", str(corpus), "--output", str(out),
           "--format", "jsonl", "--vocab", str(bert_vocab), "--dupe-factor", "2",
           "--num-shards", "4", "--executor", "local"]
    for stage in ("pass 2/3", "pass 3/3"):  # kill it as a pass starts, then once more
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if stage in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert (out / "_work").exists() and not (out / "manifest.json").exists()
    rerun = prepare(_cfg(corpus, out, bert_vocab, executor="local"))
    clean = prepare(_cfg(corpus, tmp_path / "clean", bert_vocab, executor="local"))
    assert [s["sha256"] for s in rerun["shards"]] == [s["sha256"] for s in clean["shards"]]
    _check_output(out, rerun, 30522, 101, 102)


@pytest.mark.timeout(600)
def test_s3_input_and_output_through_moto(ray_local, s3_server, corpus, bert_vocab):
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for bucket in ("corpus", "shards"):
        s3.create_bucket(Bucket=bucket)
    for p in sorted(corpus.iterdir()):
        s3.upload_file(str(p), "corpus", f"wiki/{p.name}")
    s3.upload_file(str(bert_vocab), "corpus", "vocab.txt")
    manifest = prepare(PrepareConfig(input=["s3://corpus/wiki/"], output="s3://shards/run1",
                                     format="jsonl", vocab="s3://corpus/vocab.txt",
                                     dupe_factor=1, num_shards=2, split_bytes=200_000))
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="shards")["Contents"]
                  if not o["Key"].endswith("/"))  # pyarrow leaves directory markers
    assert keys == ["run1/manifest.json", "run1/shard-00000.parquet",
                    "run1/shard-00001.parquet", "run1/vocab.txt"]
    stored = json.loads(s3.get_object(Bucket="shards", Key="run1/manifest.json")["Body"].read())
    assert stored["counts"] == manifest["counts"] and stored["counts"]["documents"] == 1500
    body = s3.get_object(Bucket="shards", Key="run1/shard-00001.parquet")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest["shards"][1]["sha256"]
    assert pq.read_table(pa.BufferReader(body)).num_rows == manifest["shards"][1]["rows"]


@pytest.mark.timeout(300)
@pytest.mark.beside
def test_bad_inputs_are_counted_in_the_manifest(bert_vocab, tmp_path, wiki_jsonl):
    d = tmp_path / "in"
    d.mkdir()
    good = [json.loads(x)["text"] for x in wiki_jsonl.read_text().splitlines()[:200]]
    (d / "good.txt").write_text("\n\n".join(good) + "\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "blob.txt").write_bytes(os.urandom(2048) + b"\x00" * 10)
    (d / "mixed.txt").write_bytes(b"Fine text here. More of it.\n\xff\xfe broken\n")
    (d / "long.txt").write_text("Long " * 600_000 + "end.\n")  # one 3 MB line
    m = prepare(PrepareConfig(input=[str(d)], output=str(tmp_path / "o"), format="text",
                              vocab=str(bert_vocab), dupe_factor=1, num_shards=2,
                              executor="local"))
    assert m["skipped"]["by_reason"] == {"binary file (NUL bytes)": 1, "empty file": 1,
                                         "invalid UTF-8 line": 1}
    assert m["counts"]["documents"] == 200 + 1 + 1  # good + mixed + the long line
    assert len(m["inputs"]) == 5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jobs.prepare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)
@pytest.mark.beside
def test_user_errors_are_one_line_with_exit_code_2(bert_vocab, tmp_path, corpus):
    bad_vocab = tmp_path / "vocab.txt"
    bad_vocab.write_text("[PAD]\nhello\nhello\n")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    cases = [
        (["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--vocab",
          str(bert_vocab)], "no such file or directory"),
        (["--input", str(corpus), "--output", str(tmp_path / "o"), "--format", "jsonl",
          "--vocab", str(bad_vocab)], "appears twice"),
        (["--input", str(tmp_path / "t.parquet"), "--output", str(tmp_path / "o"),
          "--format", "parquet", "--vocab", str(bert_vocab)], "no column 'text'"),
        (["--input", str(corpus), "--output", str(tmp_path / "o"), "--format", "jsonl",
          "--vocab", str(bert_vocab), "--set", "max_seq_lenght=64"], "unknown key"),
        (["--input", str(corpus), "--output", str(tmp_path / "o"), "--format", "jsonl"],
         "exactly one of --vocab"),
    ]
    for args, message in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.startswith("bertpipe: error:")]
        assert len(lines) == 1 and message in lines[0], r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.timeout(300)
def test_missing_column_in_a_later_parquet_file_surfaces_from_ray_as_one_error(
        ray_local, bert_vocab, tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"text": ["A sentence here. Another one."]}), d / "a.parquet")
    pq.write_table(pa.table({"body": ["No text column."]}), d / "b.parquet")
    with pytest.raises(InputError, match="b.parquet: no column 'text'"):
        prepare(PrepareConfig(input=[str(d)], output=str(tmp_path / "o"), format="parquet",
                              vocab=str(bert_vocab), dupe_factor=1, num_shards=1,
                              executor="ray"))


@pytest.mark.timeout(600)
@pytest.mark.beside
def test_trained_vocab_is_written_and_used(corpus, tmp_path):
    m = prepare(PrepareConfig(input=[str(corpus)], output=str(tmp_path / "o"), format="jsonl",
                              vocab_size=2000, dupe_factor=1, num_shards=2, executor="local"))
    vocab = (tmp_path / "o" / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert m["vocab"]["size"] == len(vocab) <= 2000
    ids = pq.read_table(tmp_path / "o" / "shard-00000.parquet").column("input_ids")
    assert max(max(x) for x in ids.to_pylist()) < len(vocab)
