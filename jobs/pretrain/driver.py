"""`bertpipe pretrain` / `python -m jobs.pretrain`: BERT pretraining with Ray Train + DeepSpeed.

The driver checks the data against the model before any worker starts, creates or finds
the MLflow run (by run name: a rerun is the same run), and runs `jobs.pretrain.loop` on
`num_workers` Ray Train workers (Train V2 `TorchTrainer`). Ray storage under
`storage_path/run_name` holds the checkpoints: rerunning a run name resumes from its latest
one, and `max_failures` worker-group failures are recovered the same way. At the end the
driver logs the final checkpoint's HF export as the run's model, registers it when
`--register-as` is given, and prints one JSON object (run id, checkpoint, model URIs, final
metrics) as the last line of stdout.

Diagnostics (`pipeline.stats`): before training, the unigram baseline of the training
shards' masked tokens (loss = their entropy, top-1 = the most frequent one's share) is logged
as params and as metrics at steps 0 and max_steps, beside the model's MLM loss and accuracy;
workers log `context_gain` (unigram loss - MLM loss) with every window and evaluation; the
summary adds the final gains and accuracy / unigram top-1, and a run that ends near the
unigram plateau prints a warning line just before its JSON summary.

Example: bertpipe pretrain --preset bert-tiny-cpu --data out/wiki128 --max-steps 200
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from jobs.config import ConfigError
from jobs.pretrain.checkpoint import TrainerState, latest_state, remove_torn
from jobs.pretrain.config import PretrainConfig
from jobs.tracking import Tracker, default_tracking_uri
from jobs.train.device import use_gpu
from jobs.train.failures import advice, root_cause
from jobs.train.paths import absolute_paths
from jobs.train.runtime import (
    JobFailed,
    ray_session,
    secrets_env,
    settings_env,
    share_secrets,
    worker_env,
)
from jobs.train.sources import resolve_model
from jobs.train.trainer import torch_trainer
from model import BertConfig
from pipeline.dataset import Dataset, open_dataset, split_holdout, verify_files
from pipeline.loader import PretrainLoader
from pipeline.stats import Unigram, diagnostics, plateau_warning, unigram_baseline
from pipeline.storage import is_remote


def log(msg: str) -> None:
    print(f"[pretrain] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Job:
    """What the driver settles before any worker starts."""
    cfg: PretrainConfig
    ds: Dataset
    run_name: str
    tracking_uri: str
    model_cfg: BertConfig
    init_dir: Path | None
    unigram: Unigram
    """The context-free baseline of the training shards' masked tokens (pipeline.stats)"""


def check_job(cfg: PretrainConfig) -> Job:
    """Every refusal that needs no cluster: config, data, batch plan, model fit, resumability.
    Local paths are made absolute here: workers run in other folders."""
    from jobs.pretrain.model import model_config
    cfg = absolute_paths(cfg.validate())  # the CLI did it; Python callers may not have
    ds = open_dataset(cfg.data)
    started = time.perf_counter()
    checked = verify_files(ds, cfg.verify_data)  # a damaged shard: one line, no worker started
    if checked["files"]:
        log(f"data checked against its manifest ({cfg.verify_data}): {checked['files']} files, "
            f"{checked['bytes'] / 1e6:.1f} MB in {time.perf_counter() - started:.1f}s")
    train_shards, _ = split_holdout(ds.shards, cfg.eval_shards)
    # the plan is metadata only: refuse a batch or worker count the data cannot serve, now
    PretrainLoader(ds, train_shards, cfg.micro_batch(), world_size=cfg.num_workers, seed=cfg.seed,
                   packing=cfg.packing)
    run_name = cfg.run_name or cfg.default_run_name()
    saved = latest_state(cfg.storage_path, run_name)
    problem = saved and saved.mismatch(TrainerState(cfg.num_workers, cfg.micro_batch(), cfg.seed,
                                                    cfg.packing))
    if problem:
        raise ConfigError(f"run {run_name} exists in {cfg.storage_path} and cannot resume: "
                          f"{problem}")
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    init_dir = None
    if cfg.init_from:
        source = resolve_model(cfg.init_from, tracking_uri, flag="--init-from",
                               need_vocab=False)
        init_dir = source.hf_dir
    model_cfg = model_config(cfg, ds, init_dir)
    unigram = unigram_baseline(ds, train_shards, dynamic=dynamic_masking(cfg, ds))
    log(f"unigram baseline of the masked tokens ({unigram.source}, {unigram.tokens} tokens): "
        f"loss {unigram.loss:.3f} nats, top-1 {unigram.top1:.3f} ({unigram.top_token!r})"
        + (f"; copying the visible token: loss {unigram.copy_loss:.3f}, accuracy "
           f"{unigram.copy_top1:.3f}" if unigram.copy_loss is not None else ""))
    return Job(cfg, ds, run_name, tracking_uri, model_cfg, init_dir, unigram)


def dynamic_masking(cfg: PretrainConfig, ds: Dataset) -> bool:
    """Whether the masks are drawn at load time (then the shards' own masks do not count)."""
    return "dynamic" in (getattr(cfg, "masking", None), ds.manifest.config.get("masking"))


def _start_tracking(job: Job, gpu: bool) -> Tracker:
    cfg = job.cfg
    tags = {"bertpipe.job": "pretrain"}
    if cfg.parent_run_id:
        tags["mlflow.parentRunId"] = cfg.parent_run_id
    tracker = Tracker(job.tracking_uri, cfg.experiment, job.run_name, tags)
    params = {**dataclasses.asdict(cfg), "run_name": job.run_name, "use_gpu": gpu,
              "precision": cfg.resolved_precision(gpu), "accumulation": cfg.accumulation(),
              "micro_batch_size": cfg.micro_batch(), "model_config": job.model_cfg.to_dict(),
              "data_vocab_size": job.ds.vocab_size, "data_max_seq_length": job.ds.max_seq_length,
              "deepspeed": cfg.deepspeed_json(gpu), "unigram": job.unigram.to_dict()}
    run_id = tracker.open(params, cfg.to_yaml(), "pretrain.yaml",
                          manifest=job.ds.manifest.to_dict(), data_path=cfg.data)
    # the baselines as flat lines beside mlm_loss / mlm_accuracy in the metric charts
    for step in (0, cfg.max_steps):
        tracker.log_metrics(job.unigram.metrics(), step=step)
    where = (f"MLflow run {run_id} ({'resumed' if tracker.resumed else 'new'}) at "
             f"{job.tracking_uri}" if run_id else f"MLflow at {job.tracking_uri} unreachable, "
             "training goes on (rank 0 retries)")
    log(f"run {job.run_name}: {where}; checkpoints in {cfg.storage_path}/{job.run_name}")
    return tracker


def _checkpoint_uri(checkpoint, storage: str) -> str:
    if is_remote(storage):  # Ray reports object-store paths without their scheme
        return storage.split("://", 1)[0] + "://" + checkpoint.path.lstrip("/")
    return checkpoint.path


def run(cfg: PretrainConfig) -> dict:
    """Train; returns the summary printed as the last line of `bertpipe pretrain`."""
    job = check_job(cfg)
    cfg = job.cfg
    torn = remove_torn(cfg.storage_path, job.run_name)
    if torn:
        log(f"removed checkpoint folder(s) that Ray never committed (a failure while saving): "
            f"{', '.join(torn)}")
    paths = (cfg.data, cfg.storage_path, cfg.init_from)
    with ray_session(cfg.address, worker_env(paths, job.tracking_uri)):
        gpu = use_gpu(cfg.use_gpu)
        tracker = _start_tracking(job, gpu)
        result = _fit(job, gpu, tracker.run_id, secrets_env(paths, job.tracking_uri))
        checkpoint = result.checkpoint
        summary = {"run_id": tracker.run_id, "run_name": job.run_name,
                   "checkpoint": _checkpoint_uri(checkpoint, cfg.storage_path)
                   if checkpoint else None,
                   "metrics": result.return_value or {}}
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                summary.update(tracker.log_model(Path(folder) / "hf", cfg.register_as,
                                                 cfg.model_alias))
        diagnosis = diagnostics(job.unigram, summary["metrics"])
        summary["metrics"].update(diagnosis)
        summary["unigram"] = job.unigram.to_dict()
        tracker.log_metrics(diagnosis, step=summary["metrics"].get("step", cfg.max_steps))
        tracker.finish("FINISHED")
    warning = plateau_warning(job.unigram, summary["metrics"])
    if warning:  # after Ray's shutdown flushed the workers' lines: among the last lines
        log(f"WARNING: {warning}")
    return summary


def _fit(job: Job, gpu: bool, run_id: str | None, secrets: dict[str, str]):
    import ray.train

    from jobs.pretrain.loop import train_loop
    cfg = job.cfg
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    trainer = torch_trainer(
        train_loop,
        train_loop_config={"config": dataclasses.asdict(cfg), "run_name": job.run_name,
                           "unigram_loss": job.unigram.loss,
                           "use_gpu": gpu, "tracking_uri": job.tracking_uri, "run_id": run_id,
                           "init_dir": str(job.init_dir) if job.init_dir else None,
                           "env": settings_env(), "secrets": share_secrets(secrets)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=job.run_name, storage_path=cfg.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints)))
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        if run_id:
            failed = Tracker(job.tracking_uri, cfg.experiment, job.run_name)
            failed.run_id = run_id
            failed.finish("FAILED")
        cause = root_cause(e)
        saved = latest_state(cfg.storage_path, job.run_name)
        where = f"{cfg.storage_path} or the workers' temp dir" if cause.kind == "disk_full" \
            else cfg.storage_path
        raise JobFailed(f"training of {job.run_name} failed: {cause.line} ("
                        f"{advice(cause, saved.step if saved else None, where)})") from e
