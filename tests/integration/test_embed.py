"""`bertpipe embed`: Ray Data batch inference with an actor pool, the real MiniLM, Wikipedia
text in, Parquet out with `vector: list<float32>` in input order, values equal to the
model's own forward pass for every mode."""
from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import model.hf
from jobs.finetune.tasks import tokenizer_for
from model import BertModel
from tests.helpers import job

embed = job("embed")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def docs(wiki_jsonl, tmp_path_factory):
    rows = [json.loads(line) for _, line in zip(range(48), open(wiki_jsonl, encoding="utf-8"))]
    path = tmp_path_factory.mktemp("embed") / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


@functools.lru_cache(maxsize=1)
def _loaded(minilm_dir):
    tok, _, _ = tokenizer_for(minilm_dir)
    tok.enable_truncation(32)
    return tok, model.hf.load(minilm_dir, cls=BertModel).eval()


def reference(minilm_dir, text: str, mode: str) -> np.ndarray:
    """The vector computed directly with the model, one text at a time (no padding)."""
    tok, net = _loaded(minilm_dir)
    ids = torch.tensor([tok.encode(text).ids])
    with torch.no_grad():
        out = net(ids, output_hidden_states=True)
    if mode == "cls":
        return out.last_hidden_state[0, 0].numpy()
    if mode == "mean":
        return out.last_hidden_state[0].mean(0).numpy()
    return torch.cat([h[0, 0] for h in out.hidden_states[-4:]]).numpy()


def read_output(folder) -> pa.Table:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".parquet")
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.mark.parametrize("mode", ["cls", "mean", "last4"])
def test_the_embedders_batches_equal_the_model_one_text_at_a_time_in_every_mode(
        mode, docs, minilm_dir):
    """What each of the job's actors computes, called directly on one padded batch (the job
    below runs it on Ray Data once; one job per mode would cost ~20 s each)."""
    from jobs.embed import Embedder
    _, rows = docs
    embedder = Embedder(str(minilm_dir), "", None, mode, 32, "text", ["title"], 1, False)
    batch = pa.table({"title": [r["title"] for r in rows[:16]],
                      "text": [r["text"] for r in rows[:16]]})
    out = embedder(batch)
    assert out.column_names == ["title", "vector"]
    vectors = np.array(out.column("vector").to_pylist(), dtype=np.float32)
    assert vectors.shape == (16, 1536 if mode == "last4" else 384)
    for i in range(16):
        np.testing.assert_allclose(vectors[i], reference(minilm_dir, rows[i]["text"], mode),
                                   atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("mode,dim", [("mean", 384)])  # padding-aware: the hardest mode
def test_embed_writes_one_vector_per_text_in_order_equal_to_the_model(
        mode, dim, docs, minilm_dir, ray_local, tmp_path, capsys):
    path, rows = docs
    out = tmp_path / "vectors"
    code = embed(["--model", str(minilm_dir), "--input", str(path), "--output", str(out),
                  "--mode", mode, "--max-seq-length", "32", "--batch-size", "16",
                  "--num-actors", "2", "--cpus-per-actor", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == len(rows) and summary["dim"] == dim
    table = read_output(out)
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    assert table.column_names == ["title", "topic", "vector"]  # kept columns, then the vector
    assert table.column("title").to_pylist() == [r["title"] for r in rows]  # input order
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    assert vectors.shape == (len(rows), dim)
    for i in (0, 17, 47):  # batched and padded vs one at a time: the same numbers
        np.testing.assert_allclose(vectors[i], reference(minilm_dir, rows[i]["text"], mode),
                                   atol=2e-4, rtol=1e-3)


def test_parquet_from_s3_in_and_out(docs, minilm_dir, ray_local, s3_server, capsys):
    import boto3
    _, rows = docs
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="embed-test")
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows[:10]), buf)
    s3.put_object(Bucket="embed-test", Key="in/docs.parquet", Body=buf.getvalue().to_pybytes())
    assert embed(["--model", str(minilm_dir), "--input", "s3://embed-test/in/",
                  "--output", "s3://embed-test/out", "--keep-columns", "title",
                  "--max-seq-length", "32", "--mode", "mean"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 10
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="embed-test", Prefix="out/")["Contents"]
            if o["Key"].endswith(".parquet")]
    table = pq.read_table(pa.BufferReader(s3.get_object(Bucket="embed-test", Key=keys[0])
                                          ["Body"].read()))
    assert table.column_names == ["title", "vector"]


def test_an_actor_pool_that_would_starve_the_reads_is_refused(docs, minilm_dir, ray_local,
                                                              tmp_path, capsys):
    path, _ = docs
    assert embed(["--model", str(minilm_dir), "--input", str(path), "--output",
                  str(tmp_path / "x"), "--num-actors", "4"]) == 2
    assert "none of the cluster's 4 CPUs for reading" in capsys.readouterr().err


def test_a_missing_text_column_is_one_line(docs, minilm_dir, ray_local, tmp_path, capsys):
    path, _ = docs
    assert embed(["--model", str(minilm_dir), "--input", str(path), "--output",
                  str(tmp_path / "x"), "--text-column", "body"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # Ray may log before it
    assert last.startswith("bertpipe: error: ") and "no column 'body'" in last
