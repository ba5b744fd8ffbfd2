"""MLflow runs of every job: one run per run name, and calls that never stop a job.

- `get_or_create_run`: the run tagged `bertpipe.run_name = NAME` in the experiment, or a new
  one. A rerun or a restarted job finds the same run, never a duplicate.
- `Tracker` (the driver's view of one run): tags, params (flattened, credentials filtered
  out), the config YAML, for pretraining the dataset manifest as an artifact and as the
  run's dataset input, a search's child runs (`child`), and at the end the model: an HF
  folder (safetensors, config.json, vocab.txt) logged as a pyfunc model whose data *is* that
  folder (`jobs.tracking.pyfunc`: nothing pickled), registered under a name with an alias.
  Every call is an attempt: a failure is a warning, never an exception.
Never reads training data and never imports Ray or DeepSpeed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

from jobs.train.runtime import MLFLOW_CLIENT_ENV
from pipeline.schema import COLUMNS

RUN_NAME_TAG = "bertpipe.run_name"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "bertpipe.trial"
MODEL_URI_TAG = "bertpipe.model_uri"      # the model logged from the final checkpoint
EXPORT_TAG = "bertpipe.model_sha256"      # which weights that model holds (first 16 hex)
# a key naming a credential: *secret*, *password*, *_token, api_key, aws_* (not "tokenizer")
SECRET_KEY = re.compile(r"secret|passw(or)?d|credential|(^|[_.-])(token|api[_-]?key|auth)($|[_.-])"
                        r"|^aws_", re.I)
MODEL_REQUIREMENTS = ["torch", "safetensors", "tokenizers", "numpy", "pandas"]
# models logged before jobs/ became packages name this loader; it still resolves
PYFUNC_LOADER = "jobs.tracking"


def warn(msg: str) -> None:
    print(f"[tracking] WARNING: {msg}", file=sys.stderr, flush=True)


def client(tracking_uri: str):
    for k, v in MLFLOW_CLIENT_ENV.items():
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

    def __init__(self, tracking_uri: str, experiment: str, run_name: str,
                 tags: dict | None = None):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.run_id: str | None = None
        self.resumed = False

    def _attempt(self, what: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a tracking problem must never end a job
            warn(f"MLflow ({self.tracking_uri}): could not {what}: "
                 f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return None

    def _client(self):
        return self._attempt("connect", client, self.tracking_uri)

    def open(self, params: dict, config_yaml: str | None = None,
             config_name: str = "config.yaml", manifest: dict | None = None,
             data_path: str | None = None) -> str | None:
        """Find or create the run, tag it, log params, the config and (pretraining) the
        dataset. Returns the run id, or None when MLflow cannot be reached (the job goes on
        untracked)."""
        c = self._client()
        got = c and self._attempt("create or find the run", get_or_create_run, c,
                                  self.experiment, self.run_name, self.tags,
                                  local_artifact_root(self.tracking_uri))
        if not got:
            return None
        self.run_id, created = got
        self.resumed = not created
        if self.resumed:
            for k, v in self.tags.items():
                self._attempt(f"tag the run ({k})", c.set_tag, self.run_id, k, v)
        self._attempt("log params", self._log_params, c, params)
        if config_yaml is not None:
            self._attempt("log the config", c.log_text, self.run_id, config_yaml,
                          f"config/{config_name}")
        if manifest is not None:
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
            warn(f"run {self.run_name} resumes with changed params: {', '.join(sorted(changed))}")
            for k, v in changed.items():
                c.set_tag(self.run_id, f"bertpipe.changed.{k}", v)
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            c.log_batch(self.run_id, params=new[i:i + 100])

    def _log_dataset(self, c, manifest: dict, data_path: str | None) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
        profile = {"instances": manifest.get("counts", {}).get("instances"),
                   "tokens": manifest.get("counts", {}).get("tokens"),
                   "shards": len(manifest.get("shards", [])),
                   "max_seq_length": manifest.get("max_seq_length"),
                   "vocab_size": manifest.get("vocab", {}).get("size")}
        name = Path(str(data_path).rstrip("/")).name or "data"
        ds = Dataset(name=name, digest=digest, source_type="bertpipe-shards",
                     source=json.dumps({"uri": str(data_path)}),
                     schema=json.dumps({"columns": list(COLUMNS)}), profile=json.dumps(profile))
        c.log_inputs(self.run_id, datasets=[DatasetInput(
            ds, tags=[InputTag("mlflow.data.context", "training")])])

    def child(self, name: str, params: dict) -> Tracker:
        """A trial's run under this one, with this run's tags (untracked when this one is)."""
        run = Tracker(self.tracking_uri, self.experiment, name,
                      {**self.tags, PARENT_TAG: self.run_id or "", TRIAL_TAG: json.dumps(params)})
        if self.run_id is not None:
            run.open(params)
        return run

    def set_tag(self, key: str, value: str) -> None:
        c = self.run_id and self._client()
        if c:
            self._attempt(f"set tag {key}", c.set_tag, self.run_id, key, value)

    def log_artifact(self, path: str, folder: str) -> None:
        c = self.run_id and self._client()
        if c:
            self._attempt(f"log {path}", c.log_artifact, self.run_id, path, folder)

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        c = self.run_id and batch and self._client()
        if c:
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
                info = mlflow.pyfunc.log_model(name="model", loader_module=PYFUNC_LOADER,
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
        c = self.run_id and self._client()
        if c:
            self._attempt("end the run", c.set_terminated, self.run_id, status)
