"""Ray start-up and what every Ray worker gets from the driver's environment.

Written once for all jobs (prepare, pretrain, fine-tune, embed):
- `ray_session(address, env)`: connect to the cluster (`--address`, `$RAY_ADDRESS`) or start
  a local Ray instance, with `env` as the job's runtime env; inside a Ray job (`ray job
  submit`) our env is merged with the job's. Shuts Ray down on exit only if it started it.
- `worker_env(paths, tracking_uri)`: plain settings (DeepSpeed's op cache, endpoints,
  MLflow client timeouts) always; credentials only where the job needs them: S3 ones when a
  path is remote, MLflow ones when the tracking server or a model is remote.
- Credentials never travel as runtime-env `env_vars`: Ray's runtime env agent writes those
  to its log on every node (`runtime_env_agent.log`, readable through the dashboard).
  `ray_session` hands them to workers in a `worker_process_setup_hook`, which Ray keeps in
  its internal store and logs only by name; a job whose Ray someone else started passes
  them as an object (`share_secrets` on the driver, `apply_secrets` in the worker). Never
  in a loop config's plain values, params or logs.
- `worker_runtime_env(env)`: for Ray started by someone else (a test, the workflow): only
  the (non-secret) keys its job env lacks, or None, which keeps Ray free to reuse workers.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

# fail fast on an unreachable MLflow server (its defaults retry for minutes), and no
# progress bar per model download in the jobs' output; the user's environment wins
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
SETTINGS_ENV = ("TORCH_EXTENSIONS_DIR", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "AWS_DEFAULT_REGION", "AWS_REGION", "DS_ACCELERATOR", "BERTPIPE_CACHE",
                *MLFLOW_CLIENT_ENV)
AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
MLFLOW_SECRETS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                  "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS")
MLFLOW_MODEL_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def extensions_dir() -> str:
    """Where DeepSpeed's compiled ops are cached between runs (a cold build takes a minute or
    more): one folder per Python environment (`<venv>/torch_extensions`), since a build
    names that environment's paths and a second environment in the same folder rebuilds."""
    prefix = Path(sys.prefix)
    default = prefix / "torch_extensions" if prefix != Path(sys.base_prefix) else \
        Path.home() / ".cache" / "bertpipe" / "torch_extensions"
    return os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default))


def interpreter_tools_first() -> None:
    """Put this interpreter's bin folder first on PATH. DeepSpeed builds its ops with the
    `ninja` on PATH; a cluster node has the environment's own (pip's) first, a shell often
    the system's, and ninja rebuilds from scratch when another version wrote the build log
    (a minute on 2 cores, each time the two alternate)."""
    tools = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != tools:
        os.environ["PATH"] = tools + (os.pathsep + path if path else "")


def settings_env() -> dict[str, str]:
    """Non-secret settings every worker needs (safe to put in a loop config)."""
    extensions_dir()
    env = {k: os.environ[k] for k in SETTINGS_ENV if k in os.environ}
    env.update(TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def secrets_env(paths: Iterable[str | None] = (), tracking_uri: str | None = None) -> dict[str, str]:
    """Credentials the workers use: S3 ones for remote paths, MLflow ones for a server or an
    MLflow model URI among `paths`."""
    from pipeline.storage import is_remote
    paths = [str(p) for p in paths if p]
    keys: tuple[str, ...] = ()
    if any(is_remote(p) for p in paths):
        keys += AWS_SECRETS
    if (tracking_uri or "").startswith(("http://", "https://", "databricks")) or \
            any(p.startswith(MLFLOW_MODEL_SCHEMES) for p in paths):
        keys += MLFLOW_SECRETS
    return {k: os.environ[k] for k in keys if k in os.environ}


# A Ray instance a job starts for itself is one machine with no node to drain: no preemption
# watcher (one actor process less per worker group start), and the Train controller polls its
# workers more often (a finished or failed step is seen sooner). About 6 s less per Ray Train
# run on 2 cores (measured twice each: 49.6 and 50.8 s against 54.8 and 58.4 s). A cluster's
# own settings are left alone; the user's environment wins.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def local_ray_settings() -> None:
    """Before starting a local Ray instance: its processes inherit LOCAL_RAY_ENV."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)


def own_local_ray() -> bool:
    """Whether this process started the Ray instance it is connected to: a local instance
    that ends with this process (Ray keeps no public flag for it; False if that changes)."""
    try:
        from ray._private import worker
        node = worker._global_node
    except (ImportError, AttributeError):
        return False
    return bool(node is not None and getattr(node, "head", False))


def worker_env(paths: Iterable[str | None] = (), tracking_uri: str | None = None) -> dict[str, str]:
    return {**settings_env(), **secrets_env(paths, tracking_uri)}


def storage_root(path: str) -> str:
    """A local path made absolute (workers and Ray storage run in other folders); a URI as is."""
    from pipeline.storage import is_remote
    return path if is_remote(path) else str(Path(path).expanduser().absolute())


def apply_settings(env: dict[str, str]) -> None:
    """On a worker, before DeepSpeed loads its ops: settings from the driver, unless the
    worker's own environment has them, and this environment's build tools first; Ray
    Train's report lines kept off the console."""
    from jobs.train.trainer import quiet_reports
    for key, value in env.items():
        os.environ.setdefault(key, value)
    extensions_dir()
    interpreter_tools_first()
    quiet_reports()


def secrets_hook(secrets: dict[str, str]):
    """A worker setup hook that puts `secrets` in each worker's environment."""
    secrets = dict(secrets)

    def bertpipe_credentials() -> None:  # by value: workers need none of our modules for it
        os.environ.update(secrets)
    return bertpipe_credentials


def share_secrets(secrets: dict[str, str]):
    """On the driver of a running Ray: the credentials as an object reference for a loop
    config (None when there are none); the worker calls `apply_secrets` on it."""
    if not secrets:
        return None
    import ray
    return ray.put(dict(secrets))


def apply_secrets(ref) -> None:
    """In a worker: the driver's credentials (from `share_secrets`) win over its own."""
    if ref is not None:
        import ray
        os.environ.update(ray.get(ref))


@contextlib.contextmanager
def ray_session(address: str | None, env: dict[str, str],
                log_to_driver: bool = True) -> Iterator[bool]:
    """Ray for the duration of a job; yields True when this call started (and will stop) it.
    Settings in `env` become the job's env vars; credentials reach workers through a setup
    hook, never as env vars (which Ray logs)."""
    import ray
    if ray.is_initialized():
        yield False
        return
    # inside a Ray job (`ray job submit`), merge our runtime env with the job's
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    secrets = {k: v for k, v in env.items() if k in AWS_SECRETS + MLFLOW_SECRETS}
    runtime_env: dict = {"env_vars": {k: v for k, v in env.items() if k not in secrets}}
    if secrets:
        runtime_env["worker_process_setup_hook"] = secrets_hook(secrets)
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        local_ray_settings()
    ray.init(address=address, log_to_driver=log_to_driver,
             runtime_env=runtime_env)
    try:
        yield True
    finally:
        ray.shutdown()  # flushes worker logs, so a job's summary really is its last line


def worker_runtime_env(env: dict[str, str]) -> dict | None:
    """The part of `env` the running Ray job's runtime env lacks, as a worker runtime env."""
    import ray
    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    missing = {k: v for k, v in env.items() if job_env.get(k) != v}
    return {"env_vars": missing} if missing else None


class JobFailed(RuntimeError):
    """A job that started failed for good (training after its restarts, every trial); the
    message is one line. The CLI prints it and exits with 1."""
