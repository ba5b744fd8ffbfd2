"""MLflow for the training jobs: one run per run name, logging that never stops training.

- `get_or_create_run`: the run tagged `bertpipe.run_name = NAME` in the experiment, or a new
  one. A rerun or a restarted job finds the same run, never a duplicate.
- `Tracker` (driver): params (flattened, credentials filtered out), the config YAML and the
  dataset manifest as artifacts, the manifest as the run's dataset input, and at the end the
  model: an HF folder (safetensors, config.json, vocab.txt) logged as a pyfunc model whose
  data *is* that folder (`loader_module=jobs.tracking`: nothing pickled), registered under a
  name with an alias. Every call is an attempt: a failure is a warning, never an exception.
- `MetricLogger` (rank 0): buffers metrics and sends them from a background thread with
  `log_batch`; while the server is unreachable it warns once, keeps the buffer and retries,
  and sends the backlog when the server is back. Training never waits on MLflow.
- `lean_server`: a local MLflow server (SQLite, one worker, no job runner) for tests and demos.
- `download_model`: a registered or logged model (models:/..., runs:/...) as a local HF folder.
Never reads training data and never imports Ray or DeepSpeed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("bertpipe.tracking")

RUN_NAME_TAG = "bertpipe.run_name"
MODEL_URI_TAG = "bertpipe.model_uri"      # the model logged from the final checkpoint
EXPORT_TAG = "bertpipe.model_sha256"      # which weights that model holds (first 16 hex)
# a key naming a credential: *secret*, *password*, *_token, api_key, aws_* (not "tokenizer")
SECRET_KEY = re.compile(r"secret|passw(or)?d|credential|(^|[_.-])(token|api[_-]?key|auth)($|[_.-])"
                        r"|^aws_", re.I)
# fail fast on an unreachable server (MLflow's defaults retry for minutes); user env wins
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MODEL_REQUIREMENTS = ["torch", "safetensors", "tokenizers", "numpy", "pandas"]


def _warn(msg: str) -> None:
    print(f"[tracking] WARNING: {msg}", file=sys.stderr, flush=True)


def client(tracking_uri: str):
    for k, v in CLIENT_ENV.items():
        os.environ.setdefault(k, v)
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store in the current directory (as an absolute
    URI: workers run elsewhere)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').absolute()}"


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a SQLite store: artifacts next to the database file (absolute, so every process
    agrees); for a server: None (the server decides)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlruns").absolute().as_uri()
    return None


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = "" if v is None else (json.dumps(v) if isinstance(v, list) else str(v))
    return out


def safe_params(d: dict) -> dict[str, str]:
    """Flattened params without anything that looks like a credential; values cut to 6000."""
    return {k: v[:6000] for k, v in flatten(d).items()
            if not SECRET_KEY.search(k.rsplit(".", 1)[-1])}


def get_or_create_run(c, experiment: str, run_name: str, tags: dict | None = None,
                      artifact_root: str | None = None) -> tuple[str, bool]:
    """(run id, created): the active run tagged with `run_name`, or a new one."""
    from mlflow.entities import ViewType
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(
        experiment, artifact_location=artifact_root,
        tags={"mlflow.experimentKind": "custom_model_development"})  # the UI's training view
    found = c.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                          run_view_type=ViewType.ACTIVE_ONLY, max_results=1,
                          order_by=["attributes.start_time ASC"])
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return run_id, False
    run = c.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **(tags or {})})
    return run.info.run_id, True


class Tracker:
    """The driver's view of one run. Every method is an attempt: errors become warnings."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.run_id: str | None = None
        self.resumed = False

    def _attempt(self, what: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a tracking problem must never end a training job
            _warn(f"MLflow ({self.tracking_uri}): could not {what}: "
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return None

    def start(self, params: dict, config_yaml: str, manifest: dict, data_path: str,
              tags: dict | None = None) -> str | None:
        """Find or create the run and record what the job runs on. Returns its id or None."""
        c = self._attempt("connect", client, self.tracking_uri)
        if c is None:
            return None
        got = self._attempt("create or find the run", get_or_create_run, c, self.experiment,
                            self.run_name, tags, local_artifact_root(self.tracking_uri))
        if got is None:
            return None
        self.run_id, created = got
        self.resumed = not created
        if self.resumed:
            for k, v in (tags or {}).items():
                self._attempt(f"tag the run ({k})", c.set_tag, self.run_id, k, v)
        self._attempt("log params", self._log_params, c, params)
        self._attempt("log the config", c.log_text, self.run_id, config_yaml, "config/pretrain.yaml")
        self._attempt("log the manifest", c.log_text, self.run_id,
                      json.dumps(manifest, indent=2), "data/manifest.json")
        if created:
            self._attempt("log the dataset", self._log_dataset, c, manifest, data_path)
        return self.run_id

    def _log_params(self, c, params: dict) -> None:
        from mlflow.entities import Param
        params = safe_params(params)
        existing = c.get_run(self.run_id).data.params
        changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
        if changed:  # params are immutable in MLflow: record the new values as tags
            _warn(f"run {self.run_name} resumes with changed params: {', '.join(sorted(changed))}")
            for k, v in changed.items():
                c.set_tag(self.run_id, f"bertpipe.changed.{k}", v)
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            c.log_batch(self.run_id, params=new[i:i + 100])

    def _log_dataset(self, c, manifest: dict, data_path: str) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
        profile = {"instances": manifest.get("counts", {}).get("instances"),
                   "tokens": manifest.get("counts", {}).get("tokens"),
                   "shards": len(manifest.get("shards", [])),
                   "max_seq_length": manifest.get("max_seq_length"),
                   "vocab_size": manifest.get("vocab", {}).get("size")}
        schema = {"columns": ["input_ids", "segment_b_start", "masked_lm_positions",
                              "masked_lm_ids", "next_sentence_label", "num_tokens"]}
        name = Path(str(data_path).rstrip("/")).name or "data"
        ds = Dataset(name=name, digest=digest, source_type="bertpipe-shards",
                     source=json.dumps({"uri": str(data_path)}), schema=json.dumps(schema),
                     profile=json.dumps(profile))
        c.log_inputs(self.run_id, datasets=[DatasetInput(
            ds, tags=[InputTag("mlflow.data.context", "training")])])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric
        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        c = self._attempt("connect", client, self.tracking_uri)
        if c is not None and batch:
            self._attempt("log metrics", c.log_batch, self.run_id, metrics=batch)

    def log_model(self, hf_dir: str | Path, register_as: str | None, alias: str) -> dict:
        """Log the HF folder as the run's model; register it when asked. {} on failure."""
        if self.run_id is None:
            return {}
        return self._attempt("log the model", self._log_model, Path(hf_dir), register_as,
                             alias) or {}

    def _log_model(self, hf_dir: Path, register_as: str | None, alias: str) -> dict:
        """Idempotent per checkpoint: a rerun of a finished run reuses what it logged."""
        import mlflow
        c = client(self.tracking_uri)
        source = hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
        tags = c.get_run(self.run_id).data.tags
        if tags.get(EXPORT_TAG) == source and tags.get(MODEL_URI_TAG):
            out = {"model_uri": tags[MODEL_URI_TAG]}
        else:
            # the fluent API keeps process-wide URIs: set both, or the registry stays wherever
            # an earlier run in this process pointed it
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pyfunc.log_model(name="model", loader_module="jobs.tracking",
                                               data_path=str(hf_dir),
                                               pip_requirements=MODEL_REQUIREMENTS)
            out = {"model_uri": info.model_uri}
            c.set_tag(self.run_id, MODEL_URI_TAG, info.model_uri)
            c.set_tag(self.run_id, EXPORT_TAG, source)
        if register_as:
            found = [v for v in c.search_model_versions(f"name = '{register_as}'")
                     if v.run_id == self.run_id and v.source == out["model_uri"]]
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            version = found[0] if found else mlflow.register_model(
                out["model_uri"], register_as, tags={RUN_NAME_TAG: self.run_name})
            c.set_registered_model_alias(register_as, alias, version.version)
            out.update(registered_model=register_as, version=int(version.version), alias=alias,
                       registered_uri=f"models:/{register_as}@{alias}")
        return out

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        c = self._attempt("connect", client, self.tracking_uri)
        if c is not None:
            self._attempt("end the run", c.set_terminated, self.run_id, status)


class MetricLogger:
    """Rank 0's metric sink: `log` never blocks; a thread sends batches and rides out outages."""

    def __init__(self, tracking_uri: str, run_id: str | None, experiment: str = "",
                 run_name: str = "", retry_s: float = 5.0, max_buffer: int = 1_000_000):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.experiment, self.run_name = experiment, run_name
        self.retry_s, self.max_buffer = retry_s, max_buffer
        self._buf: deque = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._deadline = float("inf")
        self._down = False
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        with self._lock:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._buf.append(Metric(k, float(v), now, int(step)))
            while len(self._buf) > self.max_buffer:  # bounded: drop the oldest
                self._buf.popleft()
                self.dropped += 1
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._buf)

    def _send_some(self, c) -> None:
        with self._lock:
            batch = [self._buf[i] for i in range(min(1000, len(self._buf)))]
        if not batch:
            return
        if self.run_id is None:  # the driver could not reach MLflow: find the run ourselves
            self.run_id, _ = get_or_create_run(c, self.experiment, self.run_name,
                                               artifact_root=local_artifact_root(self.tracking_uri))
        c.log_batch(self.run_id, metrics=batch)
        with self._lock:
            for _ in batch:
                self._buf.popleft()
        self.sent += len(batch)

    def _run(self) -> None:
        c = None
        while True:
            self._wake.wait(timeout=self.retry_s)
            self._wake.clear()
            try:
                c = c or client(self.tracking_uri)
                while self.pending():
                    self._send_some(c)
                if self._down:
                    print(f"[tracking] MLflow at {self.tracking_uri} is reachable again; "
                          "buffered metrics sent", file=sys.stderr, flush=True)
                    self._down = False
                if self._closing:
                    return
            except Exception as e:
                if not self._down:
                    _warn(f"MLflow at {self.tracking_uri} unreachable ({type(e).__name__}); "
                          f"training goes on, metrics are buffered and retried every "
                          f"{self.retry_s:g}s")
                    self._down = True
                if self._closing and time.time() >= self._deadline:
                    return
                time.sleep(self.retry_s)

    def close(self, timeout: float = 30.0) -> None:
        """Send what is buffered, then stop. Waits up to `timeout` s while the server answers;
        if it is down right now, gives it one more try. Warns about what could not be sent."""
        self._deadline = time.time() + (0.0 if self._down else timeout)
        self._closing = True
        self._wake.set()
        self._thread.join(max(0.0, self._deadline - time.time()) + 15)
        left = self.pending()
        if left or self.dropped:
            _warn(f"{left + self.dropped} metric values could not be sent to {self.tracking_uri}")


# --------------------------------------------------------------------------- models

class BertPyfunc:
    """What `mlflow.pyfunc.load_model` returns for our models: texts -> pooled [CLS] vectors."""

    def __init__(self, path: str):
        import model.hf
        self.path = Path(path)
        self.model = model.hf.load(self.path).eval()
        cfg = json.loads((self.path / "tokenizer_config.json").read_text()) \
            if (self.path / "tokenizer_config.json").is_file() else {}
        from tokenizers import BertWordPieceTokenizer
        self.tokenizer = BertWordPieceTokenizer(str(self.path / "vocab.txt"),
                                                lowercase=cfg.get("do_lower_case", True))
        self.max_len = self.model.config.max_position_embeddings

    def predict(self, data, params=None):
        import numpy as np
        import torch
        texts = list(data["text"]) if hasattr(data, "columns") else list(data)
        out = []
        with torch.no_grad():
            for text in texts:
                ids = self.tokenizer.encode(str(text)).ids[:self.max_len]
                pooled = self.model.bert(torch.tensor([ids])).pooler_output
                out.append(pooled[0].numpy())
        return np.stack(out) if out else np.zeros((0, self.model.config.hidden_size))


def _load_pyfunc(data_path: str) -> BertPyfunc:
    """MLflow's entry point for `loader_module="jobs.tracking"` models."""
    return BertPyfunc(data_path)


def find_hf_folder(root: Path) -> Path:
    """The folder holding config.json under a downloaded model (pyfunc keeps it in data/)."""
    if (root / "config.json").is_file():
        return root
    found = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"no config.json under {root}")
    return found[0].parent


def download_model(uri: str, dest: str | Path, tracking_uri: str | None = None) -> Path:
    """A models:/ or runs:/ model as a local HF folder under `dest`. With `tracking_uri`,
    MLflow's process-wide tracking and registry URIs are set to it (models:/ resolves
    through the registry URI, not the tracking URI passed to a call)."""
    import mlflow
    for k, v in CLIENT_ENV.items():
        os.environ.setdefault(k, v)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest),
                                                tracking_uri=tracking_uri)
    return find_hf_folder(Path(local))


# --------------------------------------------------------------------------- server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lean_server(root: str | Path, port: int | None = None,
                timeout: float = 60.0) -> Iterator[str]:
    """A local MLflow server on 127.0.0.1 (SQLite + served artifacts, 1 worker, no job
    runner); yields its URI and stops it afterwards. Reusing `root` keeps its data."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    logf = open(root / "server.log", "ab")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # its own group: stopped as one
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}; "
                                   f"see {root / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"mlflow server not up on {uri} after {timeout:.0f}s")
            time.sleep(0.3)
        yield uri
    finally:
        _stop_group(proc)
        logf.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (ours, from start_new_session), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the parent
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
