"""Helpers shared by tests: free ports, waiting for a server, small synthetic datasets.

Test files import from here, never from each other.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.tracking.server import free_port, start_mlflow, stop_group
from pipeline.schema import SCHEMA_VERSION, SPECIAL_TOKENS, instance_schema, length_bin

__all__ = ["free_port", "wait_for_port", "lean_server", "make_rows", "write_dataset", "VOCAB", "CLS", "SEP",
           "MASK", "planned_digest"]

VOCAB = 1000
CLS, SEP, MASK = 2, 3, 4


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def make_rows(rng, n, max_len, bin_size):
    """n random instances shaped like prepare's output, sorted by length bin."""
    rows = []
    for _ in range(n):
        length = int(rng.integers(8, max_len + 1))
        ids = rng.integers(5, VOCAB, size=length)
        ids[0] = CLS
        b_start = int(rng.integers(2, length - 1))
        ids[b_start - 1] = SEP
        ids[-1] = SEP
        k = int(rng.integers(1, min(6, length - 3) + 1))
        pos = np.sort(rng.choice(np.arange(1, length - 1), size=k, replace=False))
        original = ids[pos].copy()
        ids[pos] = MASK
        rows.append(dict(input_ids=ids.tolist(), segment_b_start=b_start,
                         masked_lm_positions=pos.tolist(), masked_lm_ids=original.tolist(),
                         next_sentence_label=int(rng.integers(0, 2)), num_tokens=length))
    rows.sort(key=lambda r: length_bin(r["num_tokens"], bin_size))
    return rows


def write_dataset(out: Path, num_shards=4, rows_per_shard=60, max_len=64, bin_size=16,
                  seed=0, nsp=True) -> Path:
    """A `prepare`-shaped output of random instances: shards, vocab.txt (the special tokens
    first, so ids 2/3/4 are [CLS]/[SEP]/[MASK]) and a manifest with real checksums."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(num_shards):
        rows = make_rows(rng, rows_per_shard, max_len, bin_size)
        table = pa.Table.from_pylist(rows, schema=instance_schema(VOCAB))
        name = f"shard-{s:05d}.parquet"
        pq.write_table(table, out / name, row_group_size=16)
        bins = {}
        for r in rows:
            b = str(int(length_bin(r["num_tokens"], bin_size)))
            bins[b] = bins.get(b, 0) + 1
        shards.append({"file": name, "rows": len(rows),
                       "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(),
                       "rows_per_bin": bins, "tokens": sum(r["num_tokens"] for r in rows),
                       "size": (out / name).stat().st_size})
    vocab = "\n".join([*SPECIAL_TOKENS, *(f"t{i}" for i in range(len(SPECIAL_TOKENS), VOCAB))])
    (out / "vocab.txt").write_text(vocab + "\n")
    manifest = {"schema_version": SCHEMA_VERSION,
                "config": {"max_seq_length": max_len, "bin_size": bin_size, "nsp": nsp},
                "vocab": {"file": "vocab.txt",
                          "sha256": hashlib.sha256((vocab + "\n").encode()).hexdigest(),
                          "size": VOCAB, "do_lower_case": True},
                "max_seq_length": max_len, "bin_size": bin_size, "nsp": nsp, "inputs": [],
                "skipped": {"count": 0, "by_reason": {}}, "counts": {}, "shards": shards}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def job(name: str):
    """A command's CLI entry as a function of its arguments: job("finetune")(["--task", ...])
    runs exactly what `bertpipe finetune --task ...` runs and returns its exit code."""
    from jobs.cli import main

    def run(argv: list[str] | None = None) -> int:
        return main([name, *(argv or [])])
    return run


@contextlib.contextmanager
def lean_server(root: Path, port: int | None = None):
    """A real MLflow server on 127.0.0.1 storing under `root`; yields its URI, then stops it.
    Reusing `root` keeps its data (a restart)."""
    proc, uri = start_mlflow(root, port)
    try:
        yield uri
    finally:
        stop_group(proc.pid)


def cxx_compiler() -> str | None:
    """Inductor's CPU backend builds C++: without a compiler there is no torch.compile test."""
    return next((c for c in (os.environ.get("CXX"), "g++", "c++", "clang++")
                 if c and shutil.which(c)), None)


def planned_digest(data: Path | str, steps: int, batch_size: int, world: int, seed: int = 42,
                   eval_shards: int = 1) -> str:
    """The `data_digest` a pretraining run of `steps` optimizer steps (no accumulation)
    reports when it trains on exactly the samples its loaders plan: each rank's running hash
    of the sample ids of its micro-batches, replayed here without training."""
    from jobs.pretrain.metrics import sample_digest
    from pipeline.dataset import open_dataset, split_holdout
    from pipeline.loader import PretrainLoader
    ds = open_dataset(str(data))
    train, _ = split_holdout(ds.shards, eval_shards)
    digests = []
    for rank in range(world):
        stream = PretrainLoader(ds, train, batch_size // world, rank=rank, world_size=world,
                                seed=seed, prefetch=False).iterate()
        digest = ""
        for _ in range(steps):
            digest = sample_digest(digest, next(stream).sample_ids)
        digests.append(digest)
    return hashlib.sha256("".join(digests).encode()).hexdigest()
