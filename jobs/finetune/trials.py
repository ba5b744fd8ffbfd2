"""Running fine-tuning trials: one `TorchTrainer` fit per trial, several in parallel.

`fit_trial` runs `jobs.finetune.loop.train_loop` for one hyperparameter setting on
`num_workers` Ray Train workers (Train V2; `num_workers=0` is Ray Train's local mode, in
this process) with `CheckpointConfig(num_to_keep=1)`, and returns the best dev metrics with
the best checkpoint. A trial's storage folder is cleared first: a rerun retrains rather than
resuming a finished trial. `run_trials` launches each trial as a Ray task that only waits on
its trainer (0 CPUs), keeping at most `max_concurrent` in flight: by default as many as the
cluster's CPUs and GPUs hold when the trials start (`fitting_trials`), so that no trainer
waits for workers (Ray Train gives up a worker group that waits 60 s, printing a traceback,
and tries again). Local mode runs trials one after another.
Never talks to MLflow itself (the loop's rank 0 logs; the driver creates the runs).
"""
from __future__ import annotations

from dataclasses import dataclass

from jobs.train.failures import root_cause
from jobs.train.runtime import settings_env, storage_root
from jobs.train.trainer import torch_trainer
from pipeline.storage import delete, join


class TrialFailed(RuntimeError):
    """A trial ended with an error; the message is one line."""


@dataclass
class TrialJob:
    """Everything one trial needs; plain values (it travels to a Ray task)."""
    name: str
    trial: dict
    run_id: str | None
    loop_config: dict
    num_workers: int
    cpus_per_worker: float
    use_gpu: bool
    storage_path: str


def fit_trial(job: TrialJob) -> dict:
    """Train one trial; {"name", "trial", "run_id", "result" (rank 0's return), "checkpoint"}."""
    import ray.train

    from jobs.finetune.loop import train_loop
    local = job.num_workers == 0
    storage = storage_root(job.storage_path)
    if not local:
        delete(join(storage, job.name))  # no resuming of an old attempt: train afresh
    resources = {"CPU": job.cpus_per_worker, **({"GPU": 1} if job.use_gpu else {})}
    trainer = torch_trainer(
        train_loop,
        train_loop_config={**job.loop_config, "trial": job.trial, "trial_name": job.name,
                           "run_id": job.run_id, "use_gpu": job.use_gpu, "local": local,
                           "env": settings_env()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.num_workers, use_gpu=job.use_gpu,
            resources_per_worker=None if local else resources),
        run_config=ray.train.RunConfig(
            name=job.name, storage_path=None if local else storage,
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        # the error that explains the others, not Ray's "Training failed due to worker errors"
        raise TrialFailed(f"trial {job.name} failed: {root_cause(e).line[:300]}") from e
    except Exception as e:  # local mode raises the loop's own error
        cause = root_cause(e)
        if not local or cause.kind == "user":  # bad input fails every trial: say so once
            raise
        raise TrialFailed(f"trial {job.name} failed: {cause.line[:300]}") from e
    out = result.return_value or {}
    checkpoint = result.checkpoint
    if local and out.get("best_dir"):
        checkpoint = ray.train.Checkpoint.from_directory(out["best_dir"])
    return {"name": job.name, "trial": job.trial, "run_id": job.run_id, "result": out,
            "checkpoint": checkpoint}


def fitting_trials(job: TrialJob, cluster: dict[str, float]) -> int | None:
    """How many trials like `job` the cluster's resources (`ray.cluster_resources()`) run at
    once: at least 1 (a trial that needs more than the cluster waits for it to grow); None
    when a trial needs no CPUs or GPUs."""
    need = {"CPU": job.num_workers * job.cpus_per_worker,
            "GPU": job.num_workers if job.use_gpu else 0}
    fits = [int(cluster.get(name, 0) // amount) for name, amount in need.items() if amount > 0]
    return max(1, min(fits)) if fits else None


def run_trials(jobs: list[TrialJob], max_concurrent: int | None, on_done=None) -> list[dict]:
    """Every trial's outcome, in the order given; a failed trial is {"error": ...}.

    Trials run as Ray tasks (0 CPUs each: the trainer's workers hold the resources) with at
    most `max_concurrent` in flight (default: `fitting_trials`); in local mode (no workers)
    one after another.
    `on_done(outcome)` is called as each trial finishes."""
    outcomes: dict[int, dict] = {}

    def finish(i: int, outcome: dict) -> None:
        outcomes[i] = outcome
        if on_done is not None:
            on_done(outcome)

    if len(jobs) == 1 or jobs[0].num_workers == 0:
        for i, job in enumerate(jobs):
            try:
                finish(i, fit_trial(job))
            except TrialFailed as e:
                finish(i, {"name": job.name, "trial": job.trial, "run_id": job.run_id,
                           "error": str(e)})
        return [outcomes[i] for i in range(len(jobs))]

    import ray
    remote = ray.remote(num_cpus=0, max_retries=0)(fit_trial)
    limit = max_concurrent or fitting_trials(jobs[0], ray.cluster_resources()) or len(jobs)
    pending: dict = {}
    queue = list(enumerate(jobs))
    while queue or pending:
        while queue and len(pending) < limit:
            i, job = queue.pop(0)
            pending[remote.remote(job)] = i
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        try:
            finish(i, ray.get(done[0]))
        except Exception as e:  # the task raised TrialFailed (wrapped) or died
            cause = getattr(e, "cause", None) or e
            first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            finish(i, {"name": jobs[i].name, "trial": jobs[i].trial, "run_id": jobs[i].run_id,
                       "error": first[:300]})
    return [outcomes[i] for i in range(len(jobs))]
