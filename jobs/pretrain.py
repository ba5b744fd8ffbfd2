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
from jobs.pretrain_config import PretrainConfig, preset_path, presets
from jobs.tracking import CLIENT_ENV, Tracker, default_tracking_uri
from pipeline.loader import PretrainLoader, open_dataset, split_holdout
from pipeline.storage import is_remote

# environment the workers need from the driver (credentials pass through, never logged)
WORKER_ENV_KEYS = ("TORCH_EXTENSIONS_DIR", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                   "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                   "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                   "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "DS_ACCELERATOR",
                   "BERTPIPE_CACHE", *CLIENT_ENV)


class TrainingFailed(RuntimeError):
    """Training ended with an error after the allowed restarts; the message is one line."""


def log(msg: str) -> None:
    print(f"[pretrain] {msg}", file=sys.stderr, flush=True)


def worker_env() -> dict[str, str]:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path.home() / ".cache" / "bertpipe" / "torch_extensions"))
    env = {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ}
    env.update(TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _storage(path: str) -> str:
    return path if is_remote(path) else str(Path(path).expanduser().absolute())


def _init_ray(cfg: PretrainConfig) -> bool:
    """Connect to (or start) Ray; True when this call started it."""
    import ray
    if ray.is_initialized():
        return False
    ray.init(address=cfg.address or os.environ.get("RAY_ADDRESS"),
             runtime_env={"env_vars": worker_env()})
    return True


def _use_gpu(cfg: PretrainConfig) -> bool:
    import ray
    if cfg.use_gpu is not None:
        return cfg.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


def run(cfg: PretrainConfig) -> dict:
    """Train; returns the summary printed as the last line of `bertpipe pretrain`."""
    from jobs.pretrain_deepspeed import deepspeed_config
    from jobs.pretrain_model import model_config, resolve_init

    cfg.validate()
    ds = open_dataset(cfg.data)
    train_shards, _ = split_holdout(ds.shards, cfg.eval_shards)
    # the plan is metadata only: refuse a batch or worker count the data cannot serve, now
    PretrainLoader(ds, train_shards, cfg.micro_batch(), world_size=cfg.num_workers, seed=cfg.seed)
    run_name = cfg.run_name or cfg.default_run_name()
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    init_dir = None
    if cfg.init_from:
        init_dir = resolve_init(cfg.init_from, Path(tempfile.mkdtemp(prefix="bertpipe-init-")),
                                tracking_uri)
    model_cfg = model_config(cfg, ds, init_dir)

    started_ray = _init_ray(cfg)
    try:
        gpu = _use_gpu(cfg)
        ds_config = deepspeed_config(cfg, gpu)
        tracker = Tracker(tracking_uri, cfg.experiment, run_name)
        params = {**dataclasses.asdict(cfg), "run_name": run_name, "use_gpu": gpu,
                  "precision": cfg.resolved_precision(gpu), "accumulation": cfg.accumulation(),
                  "micro_batch_size": cfg.micro_batch(), "model_config": model_cfg.to_dict(),
                  "data_vocab_size": ds.vocab_size, "data_max_seq_length": ds.max_seq_length,
                  "deepspeed": ds_config}
        run_id = tracker.start(params, cfg.to_yaml(), ds.manifest, cfg.data,
                               tags={"bertpipe.job": "pretrain"})
        log(f"run {run_name}: MLflow run {run_id} ({'resumed' if tracker.resumed else 'new'}) "
            f"at {tracking_uri}; checkpoints in {_storage(cfg.storage_path)}/{run_name}")
        result = _fit(cfg, run_name, gpu, tracking_uri, run_id, init_dir)
        final = result.return_value or {}
        checkpoint = result.checkpoint
        summary = {"run_id": run_id, "run_name": run_name,
                   "checkpoint": checkpoint.path if checkpoint else None, "metrics": final}
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


def _fit(cfg: PretrainConfig, run_name: str, gpu: bool, tracking_uri: str, run_id: str | None,
         init_dir: Path | None):
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.pretrain_loop import train_loop
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": dataclasses.asdict(cfg), "run_name": run_name,
                           "use_gpu": gpu, "tracking_uri": tracking_uri, "run_id": run_id,
                           "init_dir": str(init_dir) if init_dir else None},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=_storage(cfg.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env()}))
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        if run_id:
            failed = Tracker(tracking_uri, cfg.experiment, run_name)
            failed.run_id = run_id
            failed.finish("FAILED")
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise TrainingFailed(f"training of {run_name} failed: {first[:300]} (rerun the same "
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
