"""Integration fixtures: a real MLflow server on 127.0.0.1, stopped after the session; new
MLflow SQLite stores; the Wikipedia fixture's shards, on disk and in moto's S3."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import lean_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A lean MLflow server (SQLite, --artifacts-destination in tmp, one worker, no job
    runner) on a free 127.0.0.1 port; yields its tracking URI."""
    with lean_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def sqlite_tracking(tmp_path_factory):
    """`sqlite_tracking(folder)`: the tracking URI of a new, empty MLflow SQLite store in
    `folder`. A new store runs MLflow's schema migrations (about 5 s here); each test's store
    is a copy of one made once, which opens in a tenth of a second."""
    from mlflow import MlflowClient
    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()

    def make(folder: Path) -> str:
        db = Path(folder) / "mlflow.db"
        if not db.exists():
            shutil.copyfile(template, db)
        return f"sqlite:///{db}"
    return make


@pytest.fixture(scope="session")
def wiki_shards(wiki_jsonl, tmp_path_factory):
    """The Wikipedia fixture prepared by the real `bertpipe prepare` (local executor): a
    4096-token WordPiece vocab trained on it, seq 128, 6 shards (1 held out for eval)."""
    from tests.helpers import job
    prepare = job("prepare")
    out = tmp_path_factory.mktemp("wiki-shards") / "wiki128"
    code = prepare(["--input", str(wiki_jsonl), "--format", "jsonl", "--vocab-size", "4096",
                    "--output", str(out), "--max-seq-length", "128", "--dupe-factor", "1",
                    "--num-shards", "6", "--executor", "local"])
    assert code in (0, None)
    return out


@pytest.fixture(scope="session")
def wiki_shards_s3(wiki_shards, s3_server) -> str:
    """The same shards in a bucket of the session's moto S3 server: their s3:// URI."""
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="wiki-shards")
    for f in Path(wiki_shards).iterdir():
        s3.upload_file(str(f), "wiki-shards", f"wiki128/{f.name}")
    return "s3://wiki-shards/wiki128"
