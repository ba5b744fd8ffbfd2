"""Faults injected into real jobs, and what must survive them: nothing is lost.

Pretraining (bert-tiny, 2 Ray Train workers on the session's Ray, ZeRO 2, data read from moto
S3 with distinctive fake credentials, checkpoints on a small tmpfs, metrics on a dedicated
MLflow server) runs one run name twice, each `bertpipe pretrain` in its own process:
A. (max_failures 1) the last rank dies halfway through uploading checkpoint 20, once rank
   0's part (trainer state included) is in storage: a torn checkpoint. Ray restarts the
   workers; meanwhile the checkpoint filesystem fills up, so the restarted run cannot write
   checkpoint 20 either, and the job stops with one line;
B. space freed, the rerun; after checkpoint 20 the MLflow server is stopped, and restarted
   while training goes on to the end.
The tests read what the two runs printed and left. `bertpipe prepare` gets a full disk of
its own. (A fine-tuning search with a failing trial: test_finetune's search grid.)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs.pretrain.checkpoint import committed, latest_state
from jobs.tracking.server import start_mlflow, stop_group, wait_http
from pipeline.dataset import open_dataset, verify_files
from tests.helpers import free_port, job, planned_digest

RANK1 = "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
RUN = "faults"
STEPS = 30
BATCH = 8     # global: the runs test faults, not learning
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIABERTPIPEFAULTS7Q2", "AWS_SECRET_ACCESS_KEY":
           "bertpipe-fault-secret-9f3a1c7e5d", "MLFLOW_TRACKING_USERNAME": "faults-user",
           "MLFLOW_TRACKING_PASSWORD": "bertpipe-fault-mlflow-pw-51d2"}


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here to fill up ({done.stderr.strip()}); needs root "
                    "and a kernel that allows it")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def fill(fs: Path, leave: int) -> Path:
    """A file that leaves about `leave` bytes free on the filesystem of `fs`."""
    free = shutil.disk_usage(fs).free
    filler = fs / "filler"
    with open(filler, "wb") as f:
        left, block = max(0, free - leave), b"\0" * (1 << 20)
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
    return filler


class Outage(threading.Thread):
    """When run B holds after checkpoint 20 (and MLflow has its step 20): stop the server,
    let training go on, start the server again on the same port and store."""

    def __init__(self, root: Path, port: int, run_dir: Path, since: float, server: list):
        super().__init__(daemon=True)
        self.root, self.port, self.run_dir, self.since, self.server = \
            root, port, run_dir, since, server
        self.down = self.up = None
        self.error = None

    def run(self):
        try:
            from mlflow import MlflowClient
            uri = f"http://127.0.0.1:{self.port}"
            deadline = time.time() + 600
            while not (self.run_dir / ".holding-at-step-20").exists():
                assert time.time() < deadline, "run B never held at step 20"
                time.sleep(0.2)
            c = MlflowClient(uri)
            run_id = c.search_runs([c.get_experiment_by_name("faults").experiment_id])[0].info.run_id
            while not [m for m in c.get_metric_history(run_id, "loss")
                       if m.step == 20 and m.timestamp / 1000 >= self.since]:
                assert time.time() < deadline, "run B's step 20 never reached MLflow"
                time.sleep(0.2)
            stop_group(self.server[0].pid)
            self.down = time.time()
            (self.run_dir / ".release-at-step-20").write_text("go\n")  # on, MLflow down
            time.sleep(3)
            proc, _ = start_mlflow(self.root, port=self.port, timeout=120)
            self.server[0] = proc
            wait_http(f"{uri}/health", 60, "MLflow")
            self.up = time.time()
        except BaseException as e:  # surfaced by the test that reads it
            self.error = e


@pytest.fixture(scope="module")
def chain(tmp_path_factory, wiki_shards_s3, wiki_shards, ray_local):
    """Runs A, B, C (see the module docstring), each `bertpipe pretrain` in its own process
    connected to the session's Ray, with the credentials in its environment only; what each
    printed and left behind."""
    import ray
    work = tmp_path_factory.mktemp("faults")
    fs = work / "ckpt-fs"
    mount_tmpfs(fs, "96m")
    port = free_port()
    server = [start_mlflow(work / "mlflow", port=port, timeout=120)[0]]
    storage, run_dir = fs / "ckpt", fs / "ckpt" / RUN
    base = ["--preset", "bert-tiny-cpu", "--data", wiki_shards_s3, "--run-name", RUN,
            "--storage-path", str(storage), "--tracking-uri", f"http://127.0.0.1:{port}",
            "--experiment", "faults", "--max-steps", str(STEPS), "--batch-size", str(BATCH),
            "--warmup-steps", "4", "--learning-rate", "2e-3", "--log-every", "1",
            "--eval-every", "0", "--eval-samples", "64", "--checkpoint-every", "10",
            "--keep-checkpoints", "1", "--zero-stage", "2", "--max-failures", "0",
            "--address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, **SECRETS, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    out: dict = {"work": work, "fs": fs, "run_dir": run_dir, "port": port,
                 "mlflow_root": work / "mlflow", "session": Path(
                     ray._private.worker._global_node.get_session_dir_path())}

    def pretrain(name: str, extra: list[str]) -> None:
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "jobs.cli", "pretrain", *base, *extra],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        out[name] = {"code": done.returncode, "out": done.stdout, "err": done.stderr,
                     "seconds": round(time.time() - started, 1)}
        print(f"run {name}: exit code {done.returncode} after {out[name]['seconds']}s")

    try:
        ckpt10, torn = run_dir / "checkpoint-00000010", run_dir / "checkpoint-00000020"
        filler = []

        def fill_after_the_torn_save():
            """Once rank 1 has died halfway (its half file and rank 0's part are there), note
            what storage holds and fill the disk before Ray's restarted workers save again."""
            deadline = time.time() + 500
            while not ((torn / RANK1).exists() and (torn / "trainer_state.json").exists()):
                if time.time() > deadline:
                    return
                time.sleep(0.1)
            time.sleep(1.0)   # rank 0's upload finishing, rank 1 gone
            out["torn"] = {str(p.relative_to(torn)): p.stat().st_size
                           for p in torn.rglob("*") if p.is_file()}
            out["ckpt10"] = tree_hashes(ckpt10)
            out["sizes10"] = {str(p.relative_to(ckpt10)): p.stat().st_size
                              for p in ckpt10.rglob("*") if p.is_file()}
            out["committed_torn"] = committed(str(storage), RUN)
            out["latest_torn"] = latest_state(str(storage), RUN)
            # a rewrite of a same-sized file needs no room: leave less than rank 1's half
            filler.append(fill(fs, 256 << 10))
        filling = threading.Thread(target=fill_after_the_torn_save, daemon=True)
        filling.start()
        pretrain("A", ["--fail-at-step", "20", "--fail-while-saving", "--max-failures", "1"])
        filling.join(timeout=60)
        out["A"].update(ckpt10=tree_hashes(ckpt10), committed=committed(str(storage), RUN),
                        left=sorted(p.name for p in run_dir.glob("checkpoint-*")))
        if filler:
            filler[0].unlink()   # the user frees space
        outage = Outage(work / "mlflow", port, run_dir, time.time(), server)
        outage.start()
        pretrain("B", ["--hold-at-step", "20"])
        outage.join(timeout=300)
        out["outage"] = outage
        out["B"]["left"] = sorted(p.name for p in run_dir.glob("checkpoint-*"))
        out["B"]["summary"] = json.loads(out["B"]["out"].strip().splitlines()[-1]) \
            if out["B"]["code"] == 0 else None
        yield out
    finally:
        stop_group(server[0].pid)
        unmount(fs)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def run_ids(text: str) -> set[str]:
    return set(re.findall(r"MLflow run (\w+) \((?:new|resumed)\)", text))


def test_a_worker_killed_while_saving_leaves_a_torn_checkpoint_that_is_never_resumed(chain):
    a, b = chain["A"], chain["B"]
    # storage held a torn checkpoint 20: rank 0's part whole (its trainer state too, which
    # alone would pass for a checkpoint), rank 1's optimizer shard cut in half
    torn, whole = chain["torn"], chain["sizes10"]
    assert {"trainer_state.json", "hf/model.safetensors"} <= set(torn)
    assert torn[RANK1] == whole[RANK1] // 2
    # Ray committed only checkpoint 10, and the driver reads the same index ...
    assert chain["committed_torn"] == ["checkpoint-00000010"]
    assert chain["latest_torn"].step == 10
    # ... from which Ray's own restart resumed, the torn folder beside it
    resumed = re.findall(r"resumed faults from \S*(checkpoint-\d+) at step (\d+)", a["out"])
    assert resumed == [("checkpoint-00000010", "10")], a["out"][-3000:]
    # the rerun removed what was never committed and resumed from checkpoint 10 as well
    assert "never committed (a failure while saving): checkpoint-00000020" in b["err"]
    assert b["summary"]["metrics"]["resumed_from"] == 10


def test_a_full_disk_stops_the_job_in_one_line_and_keeps_the_last_checkpoint(chain):
    a = chain["A"]
    assert a["code"] == 1, a["err"][-3000:]
    line = last_line(a["err"])
    assert line.startswith("bertpipe: error: training of faults failed: ")
    assert "No space left on device" in line or "[errno 28]" in line.lower()
    assert f"free space on {chain['fs'] / 'ckpt'}" in line
    assert line.endswith("then rerun the same command to resume from its last checkpoint "
                         "(step 10))")
    # the last checkpoint, byte for byte, through the torn save and the full disk
    assert chain["ckpt10"] == a["ckpt10"]
    assert a["committed"] == ["checkpoint-00000010"]


def test_pruning_never_removes_the_last_complete_checkpoint(chain):
    # keep_checkpoints 1: through a torn save and a failed one, checkpoint 10 stays ...
    assert "checkpoint-00000010" in chain["A"]["left"]
    # ... and goes only once a newer one is complete
    assert chain["B"]["left"] == [f"checkpoint-{STEPS:08d}"]


def test_the_run_ends_at_max_steps_with_exactly_the_planned_samples(chain, wiki_shards):
    b = chain["B"]
    assert b["code"] == 0, b["err"][-3000:]
    m = b["summary"]["metrics"]
    assert m["step"] == STEPS and m["samples"] == STEPS * BATCH
    # after a torn save, a full disk and an MLflow restart: the samples of a run that never
    # stopped, in the same order on every rank
    assert m["data_digest"] == planned_digest(wiki_shards, STEPS, BATCH, 2)


def test_mlflow_restarted_mid_run_keeps_the_run_id_and_every_metric(chain):
    from mlflow import MlflowClient
    outage, b = chain["outage"], chain["B"]
    assert outage.error is None, outage.error
    assert outage.down and outage.up and outage.up - outage.down > 3
    client = MlflowClient(f"http://127.0.0.1:{chain['port']}")
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert len(runs) == 1                              # one run for A and B ...
    run = runs[0]
    assert run_ids(chain["A"]["err"]) == run_ids(b["err"]) == {run.info.run_id}
    assert b["summary"]["run_id"] == run.info.run_id   # ... across the restart too
    assert run.info.status == "FINISHED" and b["summary"].get("model_uri")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert {m.step for m in history} == set(range(1, STEPS + 1))
    # steps trained while the server was down were logged then and arrived later
    during = [m for m in history if outage.down <= m.timestamp / 1000 <= outage.up]
    assert during and min(m.step for m in during) > 20
    logs = b["out"] + b["err"]
    assert "unreachable" in logs and "reachable again" in logs


def test_no_credential_reaches_mlflow_ray_logs_or_the_jobs_output(chain):
    # the user name is not a secret: MLflow records who ran a run
    needles = [v.encode() for k, v in SECRETS.items() if k != "MLFLOW_TRACKING_USERNAME"]
    places = [chain["mlflow_root"], chain["session"] / "logs"]
    scanned = 0
    for place in places:
        for f in place.rglob("*"):
            if f.is_file():
                body = f.read_bytes()
                scanned += 1
                assert not [n for n in needles if n in body], f"a credential in {f}"
    for name in ("A", "B"):
        text = (chain[name]["out"] + chain[name]["err"]).encode()
        assert not [n for n in needles if n in text], f"a credential in run {name}'s output"
    # the workers got them through Ray's setup hook, which Ray logs by name only
    agent = (chain["session"] / "logs" / "runtime_env_agent.log").read_text()
    assert "bertpipe_credentials" in agent
    assert scanned > 20


def test_the_console_shows_the_jobs_progress_not_ray_trains_per_worker_lines(chain):
    text = chain["B"]["out"] + chain["B"]["err"]
    assert f"[pretrain] step {STEPS}/{STEPS} " in text
    # not every worker's report and checkpoint lines (jobs.train.trainer.quiet_reports)
    for line in ("Reporting training result", "Checkpoint successfully created"):
        assert line not in text, line
    assert "Started training worker group" in text   # the controller's: where ranks run


# ------------------------------------------------------------------ prepare on a full disk

def test_prepare_on_a_full_disk_fails_in_one_line_and_leaves_other_outputs_whole(
        tmp_path, wiki_jsonl, wiki_shards, capsys):
    from tests.helpers import write_dataset
    fs = tmp_path / "fs"
    mount_tmpfs(fs, "1m")
    try:
        previous = write_dataset(fs / "previous", num_shards=2, rows_per_shard=20)
        before = tree_hashes(previous)
        lines = wiki_jsonl.read_text().splitlines()[:1500]
        (tmp_path / "wiki.jsonl").write_text("\n".join(lines) + "\n")
        args = ["--input", str(tmp_path / "wiki.jsonl"), "--format", "jsonl",
                "--vocab", str(Path(wiki_shards) / "vocab.txt"), "--output", str(fs / "out"),
                "--max-seq-length", "128", "--dupe-factor", "1", "--num-shards", "4",
                "--executor", "local"]
        code = job("prepare")(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1
        assert err[-1].startswith("bertpipe: error: a filesystem is full (") and \
            "No space left on device" in err[-1], err[-3:]
        assert not any("Traceback" in line for line in err)
        assert not (fs / "out" / "manifest.json").exists()      # never taken for complete
        assert not list(fs.rglob(".tmp-*"))                      # no half-written file left
        assert tree_hashes(previous) == before                   # other output untouched
        verify_files(open_dataset(str(previous)))
        # space made: the rerun clears the partial output and completes (on another
        # filesystem than the temp dir, shards are copied then renamed)
        subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)
        assert job("prepare")(args) == 0
        assert verify_files(open_dataset(str(fs / "out")))["files"] == 5
    finally:
        unmount(fs)
