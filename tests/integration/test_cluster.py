"""A local multi-node Ray cluster + MLflow from one command, a real job submitted through the
Ray Jobs API, its MLflow run checked, and everything stopped by one command."""
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from jobs import cluster
from jobs.prepare import prepare
from pipeline.config import PrepareConfig

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_cluster_up_submit_pretrain_job_and_down(tmp_path, wiki_jsonl):
    lines = wiki_jsonl.read_text().splitlines()[:300]
    (tmp_path / "wiki.jsonl").write_text("\n".join(lines) + "\n")
    data = tmp_path / "shards"
    prepare(PrepareConfig(input=[str(tmp_path / "wiki.jsonl")], output=str(data),
                          format="jsonl", vocab_size=1500, max_seq_length=64, dupe_factor=1,
                          num_shards=4, executor="local"))
    state = tmp_path / "cluster"
    up = subprocess.run([sys.executable, "-m", "jobs.cli", "cluster", "up", "--dir", str(state),
                         "--head-cpus", "2", "--workers", "1", "--worker-cpus", "2"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    info = json.loads((state / "cluster.json").read_text())
    try:
        assert info["nodes"] == 2 and "RAY_ADDRESS=" in up.stdout
        # what we started listens on loopback (Ray's own gRPC ports aside: token auth)
        for url in (info["dashboard"], info["mlflow"]):
            port = int(url.rsplit(":", 1)[1])
            bound = {c.laddr.ip for c in psutil.net_connections("inet")
                     if c.status == "LISTEN" and c.laddr.port == port}
            assert bound and bound <= {"127.0.0.1", "::ffff:127.0.0.1"}, (url, bound)
        cmd = [sys.executable, "-m", "jobs.cli", "submit", "--address", info["dashboard"],
               "--", "bertpipe", "pretrain", "--preset", "pretrain-bert-tiny-cpu",
               "--data", str(data), "--max-steps", "4", "--batch-size", "8",
               "--max-seq-length", "64",
               "--warmup-steps", "1", "--log-every", "2", "--eval-every", "0",
               "--eval-samples", "32", "--checkpoint-every", "4",
               "--storage-path", str(tmp_path / "ckpt"), "--run-name", "on-cluster",
               "--tracking-uri", info["mlflow"], "--experiment", "cluster-test"]
        sub = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert sub.returncode == 0, sub.stdout[-6000:]
        assert "SUCCEEDED" in sub.stdout
        summary = json.loads([x for x in sub.stdout.splitlines() if x.startswith("{")][-1])
        from mlflow import MlflowClient
        c = MlflowClient(info["mlflow"])
        run = c.get_run(summary["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == "on-cluster"
        assert c.get_metric_history(run.info.run_id, "loss")
    finally:
        down = subprocess.run([sys.executable, "-m", "jobs.cli", "cluster", "down", "--dir",
                               str(state)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not cluster._cluster_processes(info)
    assert not (state / "cluster.json").exists()
