"""A local two-node Ray cluster + MLflow from one command, shared by this module's tests: the
ports it lists (checked against `ss -ltnp`), a real job submitted through the Ray Jobs API,
pretraining that loses its second node mid-run, and everything stopped by one command.

The cluster has one CPU per node, so a 2-worker pretraining run puts one worker on each."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from jobs import cluster
from jobs.prepare import prepare
from pipeline.config import PrepareConfig
from tests.helpers import planned_digest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
PASSWORD = "bertpipe-cluster-mlflow-pw-7c41"
LINE = re.compile(r"^\s+\[?([^\]\s]+?)\]?:(\d+)\s+(\S+)\s+pid (\d+)\s+(loopback only|"
                  r"ALL INTERFACES|beyond loopback)$")


def cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def shards(wiki_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster-data")
    lines = wiki_jsonl.read_text().splitlines()[:300]
    (out / "wiki.jsonl").write_text("\n".join(lines) + "\n")
    prepare(PrepareConfig(input=[str(out / "wiki.jsonl")], output=str(out / "shards"),
                          format="jsonl", vocab_size=1500, max_seq_length=64, dupe_factor=1,
                          num_shards=4, executor="local"))
    return out / "shards"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """`bertpipe cluster up`: (state folder, cluster.json, what `up` printed)."""
    state = tmp_path_factory.mktemp("cluster") / "state"
    up = cli("cluster", "up", "--dir", str(state), "--head-cpus", "1", "--workers", "1",
             "--worker-cpus", "1")
    assert up.returncode == 0, up.stderr
    try:
        yield state, json.loads((state / "cluster.json").read_text()), up.stdout
    finally:
        cli("cluster", "down", "--dir", str(state), timeout=120)


def listed(text: str) -> dict[tuple[str, int], str]:
    """(address, port) -> loopback only / ALL INTERFACES / beyond loopback, as printed."""
    return {(m[1], int(m[2])): m[5] for m in map(LINE.match, text.splitlines()) if m}


def same(address: str) -> str:
    """One spelling per address: `*`, 0.0.0.0 and :: (dual stack) are any; IPv4 mapped
    into IPv6 is IPv4."""
    address = address.strip("[]").removeprefix("::ffff:")
    return "any" if address in ("*", "0.0.0.0", "::") else address


def ss_listening(pids: set[int]) -> set[tuple[str, int]]:
    """What `ss -ltnp` says these processes listen on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if set(int(p) for p in re.findall(r"pid=(\d+)", line)) & pids:
            address, _, port = fields[3].rpartition(":")
            found.add((same(address), int(port)))
    return found


def test_cluster_up_lists_every_port_it_opened_and_whether_it_is_loopback_only(running):
    state, info, up = running
    assert info["nodes"] == 2 and "RAY_ADDRESS=" in up
    printed = {(same(a), port): where for (a, port), where in listed(up).items()}
    for url in (info["dashboard"], info["mlflow"]):       # what we bind: loopback
        assert printed[("127.0.0.1", int(url.rsplit(":", 1)[1]))] == "loopback only"
    print(up)   # the record of what Ray binds (see README, "Ports of a local cluster")
    assert int(info["ray_address"].rsplit(":", 1)[1]) in {port for _, port in printed}  # GCS
    for (address, _), where in printed.items():
        assert (where == "loopback only") == cluster.loopback(address)
    # `status` lists what listens now, exactly what ss shows for the cluster's processes
    for _ in range(3):  # Ray starts and stops worker processes on its own: retry a race
        now = cli("cluster", "status", "--dir", str(state))
        pids = {p.pid for p in cluster._cluster_processes(info)}
        lead = psutil.Process(info["mlflow_pid"])
        pids |= {lead.pid, *(c.pid for c in lead.children(recursive=True))}
        shown = {(same(a), p) for a, p in listed(now.stdout)}
        if shown == ss_listening(pids):
            break
        time.sleep(2)
    else:
        pytest.fail(f"status shows {sorted(shown)}, ss shows {sorted(ss_listening(pids))}")
    exposed = [k for k, v in listed(now.stdout).items() if v != "loopback only"]
    assert ("firewall them" in now.stdout) == bool(exposed)


def test_a_pretrain_job_submitted_to_the_cluster_is_tracked_in_its_mlflow(running, shards,
                                                                          tmp_path):
    _, info, _ = running
    sub = cli("submit", "--address", info["dashboard"], "--",
              "bertpipe", "pretrain", "--preset", "pretrain-bert-tiny-cpu",
              "--data", str(shards), "--max-steps", "4", "--batch-size", "8",
              "--max-seq-length", "64", "--warmup-steps", "1", "--log-every", "2",
              "--eval-every", "0", "--eval-samples", "32", "--checkpoint-every", "4",
              "--storage-path", str(tmp_path / "ckpt"), "--run-name", "on-cluster",
              "--tracking-uri", info["mlflow"], "--experiment", "cluster-test", timeout=600)
    assert sub.returncode == 0, sub.stdout[-6000:]
    assert "SUCCEEDED" in sub.stdout
    summary = json.loads([x for x in sub.stdout.splitlines() if x.startswith("{")][-1])
    from mlflow import MlflowClient
    c = MlflowClient(info["mlflow"])
    run = c.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "on-cluster"
    assert c.get_metric_history(run.info.run_id, "loss")
    # the driver logged the model from its working_dir, which the second node's workers
    # unpacked too (nodes sharing a temp dir once pulled it out from under the driver)
    assert "could not" not in sub.stdout and summary["model_uri"].startswith("models:/")
    assert c.get_logged_model(summary["model_uri"].split("/")[-1]).source_run_id == run.info.run_id


def _training_worker_on(raylet_pid: int) -> bool:
    children = psutil.Process(raylet_pid).children(recursive=True)
    return any("RayTrainWorker" in " ".join(p.cmdline()) + p.name() for p in children)


def test_losing_a_node_mid_pretraining_resumes_when_the_node_returns(running, shards,
                                                                     tmp_path):
    state, info, _ = running
    storage = tmp_path / "ckpt"
    env = {**cluster.client_env(), "MLFLOW_TRACKING_USERNAME": "cluster-user",
           "MLFLOW_TRACKING_PASSWORD": PASSWORD}   # a credential the workers get (a hook)
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "pretrain", "--address", info["ray_address"],
         "--preset", "bert-tiny-cpu", "--data", str(shards), "--max-seq-length", "64",
         "--max-steps", "20", "--batch-size", "8", "--warmup-steps", "2", "--log-every", "1",
         "--eval-every", "0", "--eval-samples", "32", "--checkpoint-every", "10",
         "--hold-at-step", "10", "--max-failures", "2", "--storage-path", str(storage),
         "--run-name", "node-loss", "--tracking-uri", info["mlflow"],
         "--experiment", "cluster-faults"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        holding = storage / "node-loss" / ".holding-at-step-10"
        deadline = time.time() + 400
        while not holding.exists():   # checkpoint 10 is committed; rank 0 holds
            assert driver.poll() is None and time.time() < deadline, \
                (tmp_path / "driver.log").read_text()[-4000:]
            time.sleep(0.2)
        second = json.loads((state / "cluster.json").read_text())["raylets"][1]
        assert _training_worker_on(second), "no training worker on the second node"
        os.kill(second, signal.SIGKILL)           # the node is lost, its worker with it
        killed = time.time()
        time.sleep(3)
        back = cli("cluster", "add-node", "--dir", str(state), "--worker-cpus", "1")
        assert back.returncode == 0, back.stderr  # ... and a node comes back
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-6000:]
        recovered = time.time() - killed
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    output = (tmp_path / "driver.log").read_text()
    summary = json.loads(output.strip().splitlines()[-1])
    m = summary["metrics"]
    assert m["step"] == 20 and m["attempts"] == 2 and m["resumed_from"] == 10, output[-4000:]
    # the samples of a 2-worker run that never lost a node, in the same order on every rank
    assert m["data_digest"] == planned_digest(shards, 20, 8, 2)
    print(f"node lost to run finished: {recovered:.0f}s")
    # the MLflow credential reached the workers without landing in Ray's logs or the output
    logs = Path(info["temp_dir"]) / "session_latest" / "logs"
    every_node = glob.glob(f"{info['temp_dir']}*/session_*/logs")    # a temp dir per node
    assert len(every_node) >= 3                                         # head, lost, returned
    leaked = [f for d in every_node for f in Path(d).rglob("*")
              if f.is_file() and PASSWORD.encode() in f.read_bytes()]
    assert not leaked and PASSWORD not in output
    assert "bertpipe_credentials" in (logs / "runtime_env_agent.log").read_text()


def test_cluster_down_stops_everything_it_started(running):
    state, info, _ = running
    down = cli("cluster", "down", "--dir", str(state), timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not cluster._cluster_processes(info)
    assert not (state / "cluster.json").exists()
