"""`bertpipe pretrain` / `python -m jobs.pretrain`: BERT pretraining with Ray Train + DeepSpeed.

The driver resolves the config (preset < --config < --set < flags), checks the data against
the model before any worker starts, creates or finds the MLflow run (by run name: a rerun is
the same run), and runs `jobs.pretrain_loop.train_loop` on `num_workers` Ray Train workers
(Train V2 `TorchTrainer`). Ray storage under `storage_path/run_name` holds the checkpoints:
rerunning a run name resumes from its latest one, and `max_failures` worker-group failures
are recovered the same way. At the end the driver logs the final checkpoint's HF export as
the run's model, registers it when `--register-as` is given, and prints one JSON object
(run id, checkpoint, model URIs, final metrics) as the last line of stdout.

Example: bertpipe pretrain --preset pretrain-bert-tiny-cpu --data out/wiki128 --max-steps 200
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from jobs.configargs import ConfigError, add_config_args, resolve
from jobs.errors import user_errors
from jobs.pretrain_checkpoint import latest_state, new_state, resume_mismatch
from jobs.pretrain_config import PretrainConfig, preset_path, presets
from jobs.tracking import CLIENT_ENV, Tracker, default_tracking_uri
from model import BertConfig
from pipeline.loader import Dataset, PretrainLoader, open_dataset, split_holdout
from pipeline.storage import is_remote

# What workers need from the driver's environment. Plain settings travel in the loop config
# and are set by each worker; credentials travel only in Ray runtime envs (the job's, when
# this command starts or connects to Ray; else per worker, and only when the job's lacks them)
# and are never logged.
SETTINGS_ENV = ("TORCH_EXTENSIONS_DIR", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "AWS_DEFAULT_REGION", "AWS_REGION", "DS_ACCELERATOR", "BERTPIPE_CACHE",
                *CLIENT_ENV)
AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
MLFLOW_SECRETS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                  "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS")


class TrainingFailed(RuntimeError):
    """Training ended with an error after the allowed restarts; the message is one line."""


def log(msg: str) -> None:
    print(f"[pretrain] {msg}", file=sys.stderr, flush=True)


def extensions_dir() -> str:
    """Where DeepSpeed's compiled ops are cached between runs (a cold build takes minutes)."""
    return os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                                 str(Path.home() / ".cache" / "bertpipe" / "torch_extensions"))


def settings_env() -> dict[str, str]:
    extensions_dir()
    env = {k: os.environ[k] for k in SETTINGS_ENV if k in os.environ}
    env.update(TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def secrets_env(cfg: PretrainConfig, tracking_uri: str) -> dict[str, str]:
    """Credentials this job's workers use: S3 ones for s3:// paths, MLflow ones for a server."""
    keys: tuple[str, ...] = ()
    if any(is_remote(p) for p in (cfg.data, cfg.storage_path, cfg.init_from or "")):
        keys += AWS_SECRETS
    if tracking_uri.startswith(("http://", "https://", "databricks")) or \
            (cfg.init_from or "").startswith(("models:/", "runs:/")):
        keys += MLFLOW_SECRETS
    return {k: os.environ[k] for k in keys if k in os.environ}


def _storage(path: str) -> str:
    return path if is_remote(path) else str(Path(path).expanduser().absolute())


def _init_ray(cfg: PretrainConfig, tracking_uri: str) -> bool:
    """Connect to (or start) Ray; True when this call started it."""
    import ray
    if ray.is_initialized():
        return False
    # inside a Ray job (`ray job submit`), merge our runtime env with the job's
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    ray.init(address=cfg.address or os.environ.get("RAY_ADDRESS"),
             runtime_env={"env_vars": {**settings_env(), **secrets_env(cfg, tracking_uri)}})
    return True


def _worker_runtime_env(cfg: PretrainConfig, tracking_uri: str) -> dict | None:
    """Credentials the Ray job's runtime env lacks (Ray initialized by the caller), if any.
    None keeps Ray free to reuse idle workers, which saves seconds per start."""
    import ray
    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    missing = {k: v for k, v in secrets_env(cfg, tracking_uri).items() if job_env.get(k) != v}
    return {"env_vars": missing} if missing else None


def _use_gpu(cfg: PretrainConfig) -> bool:
    import ray
    if cfg.use_gpu is not None:
        return cfg.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


@dataclasses.dataclass
class Job:
    """What the driver settles before any worker starts."""
    cfg: PretrainConfig
    ds: Dataset
    run_name: str
    tracking_uri: str
    model_cfg: BertConfig
    init_dir: Path | None


def check_job(cfg: PretrainConfig) -> Job:
    """Every refusal that needs no cluster: config, data, batch plan, model fit, resumability."""
    from jobs.pretrain_model import model_config, resolve_init
    cfg.validate()
    ds = open_dataset(cfg.data)
    train_shards, _ = split_holdout(ds.shards, cfg.eval_shards)
    # the plan is metadata only: refuse a batch or worker count the data cannot serve, now
    PretrainLoader(ds, train_shards, cfg.micro_batch(), world_size=cfg.num_workers, seed=cfg.seed)
    run_name = cfg.run_name or cfg.default_run_name()
    saved = latest_state(_storage(cfg.storage_path), run_name)
    problem = saved and resume_mismatch(saved, new_state(cfg.num_workers, cfg.micro_batch(),
                                                         cfg.seed))
    if problem:
        raise ConfigError(f"run {run_name} exists in {cfg.storage_path} and cannot resume: "
                          f"{problem}")
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    init_dir = None
    if cfg.init_from:
        init_dir = resolve_init(cfg.init_from, Path(tempfile.mkdtemp(prefix="bertpipe-init-")),
                                tracking_uri)
    return Job(cfg, ds, run_name, tracking_uri, model_config(cfg, ds, init_dir), init_dir)


def _start_tracking(job: Job, gpu: bool) -> Tracker:
    from jobs.pretrain_deepspeed import deepspeed_config
    cfg = job.cfg
    tracker = Tracker(job.tracking_uri, cfg.experiment, job.run_name)
    params = {**dataclasses.asdict(cfg), "run_name": job.run_name, "use_gpu": gpu,
              "precision": cfg.resolved_precision(gpu), "accumulation": cfg.accumulation(),
              "micro_batch_size": cfg.micro_batch(), "model_config": job.model_cfg.to_dict(),
              "data_vocab_size": job.ds.vocab_size, "data_max_seq_length": job.ds.max_seq_length,
              "deepspeed": deepspeed_config(cfg, gpu)}
    tags = {"bertpipe.job": "pretrain"}
    if cfg.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.parent_run_id
    run_id = tracker.start(params, cfg.to_yaml(), job.ds.manifest, cfg.data, tags=tags)
    where = (f"MLflow run {run_id} ({'resumed' if tracker.resumed else 'new'}) at "
             f"{job.tracking_uri}" if run_id else f"MLflow at {job.tracking_uri} unreachable, "
             "training goes on (rank 0 retries)")
    log(f"run {job.run_name}: {where}; checkpoints in {_storage(cfg.storage_path)}/{job.run_name}")
    return tracker


def _checkpoint_uri(checkpoint, storage: str) -> str:
    if is_remote(storage):  # Ray reports object-store paths without their scheme
        return storage.split("://", 1)[0] + "://" + checkpoint.path.lstrip("/")
    return checkpoint.path


def run(cfg: PretrainConfig) -> dict:
    """Train; returns the summary printed as the last line of `bertpipe pretrain`."""
    job = check_job(cfg)
    started_ray = _init_ray(cfg, job.tracking_uri)
    try:
        gpu = _use_gpu(cfg)
        tracker = _start_tracking(job, gpu)
        result = _fit(job, gpu, tracker.run_id)
        checkpoint = result.checkpoint
        summary = {"run_id": tracker.run_id, "run_name": job.run_name,
                   "checkpoint": _checkpoint_uri(checkpoint, _storage(cfg.storage_path))
                   if checkpoint else None,
                   "metrics": result.return_value or {}}
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                summary.update(tracker.log_model(Path(folder) / "hf", cfg.register_as,
                                                 cfg.model_alias))
        tracker.finish("FINISHED")
        return summary
    finally:
        if started_ray:
            import ray
            ray.shutdown()  # flushes worker logs, so the summary really is the last line


def _fit(job: Job, gpu: bool, run_id: str | None):
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.pretrain_loop import train_loop
    cfg = job.cfg
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": dataclasses.asdict(cfg), "run_name": job.run_name,
                           "use_gpu": gpu, "tracking_uri": job.tracking_uri, "run_id": run_id,
                           "init_dir": str(job.init_dir) if job.init_dir else None,
                           "env": settings_env()},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=job.run_name, storage_path=_storage(cfg.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env=_worker_runtime_env(cfg, job.tracking_uri)))
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        if run_id:
            failed = Tracker(job.tracking_uri, cfg.experiment, job.run_name)
            failed.run_id = run_id
            failed.finish("FAILED")
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise TrainingFailed(f"training of {job.run_name} failed: {first[:300]} (rerun the same "
                             "command to resume from its last checkpoint)") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertpipe pretrain",
        description="BERT pretraining on `bertpipe prepare` shards: Ray Train workers, DeepSpeed "
                    "ZeRO, MLflow tracking. Presets: " + ", ".join(presets()))
    parser.add_argument("--preset", default=None,
                        help="a YAML preset shipped in jobs/presets/ (instead of --config)")
    add_config_args(parser, PretrainConfig)
    return parser


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.preset:
        if args.config:
            raise ConfigError("pass --preset NAME or --config FILE, not both")
        args.config = preset_path(args.preset)
    cfg = resolve(PretrainConfig, args)
    try:
        summary = run(cfg)
    except TrainingFailed as e:
        print(f"bertpipe: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
