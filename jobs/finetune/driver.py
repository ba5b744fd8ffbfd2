"""`bertpipe finetune` / `python -m jobs.finetune`: a pretrained BERT fine-tuned on a task.

The driver resolves the config (preset < --config < --set < flags), gets the model (MLflow
URI or HF folder: `jobs.train.sources`), reads and featurizes the train and dev files with
the model's own vocab (`jobs.finetune.tasks`), and puts the features in the Ray object store
once for every trial and worker. It then runs one trial, or a search grid as parallel
trials (`jobs.finetune.trials`), each a Ray Train fit of `jobs.finetune.loop.train_loop`.
MLflow: a single run, or for a search a parent run with one child run per trial; all are
tagged with the pretrained model's URI and the run that logged it. The best trial on dev
(its best epoch) is logged as a model on its run and registered with `--register-as`;
`--output` gets a copy of its HF folder. The last line of stdout is one JSON object: the
run id, the best dev metrics, the model URIs and each trial's result.

Example: bertpipe finetune --task classification --model models:/bert-wiki@phase1 \
    --train train.jsonl --validation dev.jsonl --search paper --register-as wiki-topics
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from pathlib import Path

from jobs.finetune.config import FinetuneConfig, trial_name
from jobs.finetune.predict import check_metric, goodness
from jobs.finetune.tasks import (
    featurize,
    fit_to_training_rows,
    read_examples,
    spec_from_config,
    tokenizer_for,
)
from jobs.finetune.trials import TrialJob, run_trials
from jobs.tracking import PARENT_TAG, Tracker, default_tracking_uri
from jobs.train.device import use_gpu
from jobs.train.runtime import JobFailed, ray_session, worker_env
from jobs.train.sources import ModelSource, resolve_model
from pipeline.errors import InputError

BEST_TRIAL_TAG = "bertpipe.best_trial"


def log(msg: str) -> None:
    print(f"[finetune] {msg}", file=sys.stderr, flush=True)


def load_data(cfg: FinetuneConfig, source: ModelSource):
    """(task spec, {"train", "dev", "dev_rows"}) featurized with the model's vocab."""
    tok, vocab, _ = tokenizer_for(source.hf_dir)
    spec = spec_from_config(cfg)
    train_rows = read_examples(spec, cfg.train, cfg.format, cfg.max_train_examples)
    spec = fit_to_training_rows(spec, cfg, train_rows, cfg.train)
    check_metric(spec)
    dev_rows = read_examples(spec, cfg.validation, cfg.format, cfg.max_eval_examples)
    train = featurize(spec, tok, vocab, train_rows, cfg.train, training=True)
    dev = featurize(spec, tok, vocab, dev_rows, cfg.validation, training=False)
    workers = max(1, cfg.num_workers)
    if len(train) < workers:
        raise InputError(f"{cfg.train}: {len(train)} usable training examples for {workers} "
                         "workers")
    log(f"{spec.task}: {len(train_rows)} train examples -> {len(train)} features "
        f"({train.num_tokens()} tokens), {len(dev_rows)} dev -> {len(dev)}; metric {spec.metric}"
        + (f"; labels {spec.labels[:12]}" if spec.labels else ""))
    return spec, {"train": train, "dev": dev, "dev_rows": dev_rows}


def _best(outcomes: list[dict], metric: str) -> dict | None:
    done = [o for o in outcomes if "error" not in o and o["result"].get("best")]
    return max(done, key=lambda o: goodness(metric, o["result"]["best"][metric])) \
        if done else None


def _summary(run: Tracker, spec, outcomes: list[dict], best: dict | None) -> dict:
    """What the job prints: the run, the best dev metrics, every trial's outcome."""
    def trial(o: dict) -> dict:
        out = {"name": o["name"], "run_id": o["run_id"], **o["trial"]}
        if "error" in o:
            return {**out, "error": o["error"]}
        return {**out, f"dev_{spec.metric}": (o["result"].get("best") or {}).get(spec.metric),
                "best_epoch": o["result"].get("best_epoch"),
                "trained": o["result"].get("trained"), "seconds": o["result"].get("seconds")}
    return {"run_id": run.run_id, "run_name": run.run_name, "task": spec.task,
            "metric": spec.metric,
            "metrics": {f"dev_{k}": v for k, v in (best["result"]["best"] if best else {}).items()},
            "best_trial": trial(best) if best else None,
            "trials": [trial(o) for o in outcomes]}


def run(cfg: FinetuneConfig) -> dict:
    cfg.validate()
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    run_name = cfg.run_name or cfg.default_run_name()
    source = resolve_model(cfg.model, tracking_uri)
    log(f"model {source.uri} -> {source.hf_dir}"
        + (f" (run {source.run_id}{', ' + source.registered if source.registered else ''})"
           if source.run_id else ""))
    spec, data = load_data(cfg, source)

    env = worker_env((cfg.model, cfg.train, cfg.validation, cfg.storage_path), tracking_uri)
    session = ray_session(cfg.address, env) if cfg.num_workers else _no_ray()
    with session:
        gpu = use_gpu(cfg.use_gpu, ray_running=cfg.num_workers > 0)
        if cfg.num_workers:
            import ray
            data_ref = ray.put(data)  # once: every trial and worker reads the same object
        else:
            data_ref = data  # local mode: the trials run in this process
        tags = {"bertpipe.job": "finetune", "bertpipe.task": spec.task, **source.tags()}
        if cfg.parent_run_id:
            tags[PARENT_TAG] = cfg.parent_run_id
        job_run = Tracker(tracking_uri, cfg.experiment, run_name, tags)
        job_run.open({**dataclasses.asdict(cfg), "run_name": run_name, "use_gpu": gpu,
                      "labels": spec.labels, "regression": spec.regression,
                      "metric": spec.metric, "train_features": len(data["train"]),
                      "dev_features": len(data["dev"])}, cfg.to_yaml(), "finetune.yaml")
        trials = cfg.trials()
        log(f"run {run_name}: MLflow run {job_run.run_id} at {tracking_uri}; "
            f"{len(trials)} trial(s)")
        loop_config = {"config": dataclasses.asdict(cfg), "spec": dataclasses.asdict(spec),
                       "data": data_ref, "model_dir": str(source.hf_dir),
                       "tracking_uri": tracking_uri}
        trial_runs, jobs = {}, []
        for trial in trials:
            if cfg.search == "none":
                name, trial_run = run_name, job_run  # one trial: the job's own run
            else:
                name = trial_name(run_name, trial)
                trial_run = job_run.child(name, trial)
            trial_runs[name] = trial_run
            jobs.append(TrialJob(name, trial, trial_run.run_id, loop_config, cfg.num_workers,
                                 cfg.cpus_per_worker, gpu, cfg.storage_path))

        def trial_done(outcome: dict) -> None:
            if trial_runs[outcome["name"]] is not job_run:
                trial_runs[outcome["name"]].finish("FAILED" if "error" in outcome else "FINISHED")
        outcomes = run_trials(jobs, cfg.max_concurrent_trials, on_done=trial_done)
        for o in outcomes:
            if "error" in o:
                log(o["error"])  # "trial NAME failed: ..."
        best = _best(outcomes, spec.metric)
        summary = _summary(job_run, spec, outcomes, best)
        if best is None:
            job_run.finish("FAILED")
            first = next((o["error"] for o in outcomes if "error" in o), "no dev metrics")
            raise JobFailed(f"no trial produced a model (first error: {first})")
        with best["checkpoint"].as_directory() as folder:
            # the best epoch of the best trial: logged on its run, registered when asked
            summary.update(trial_runs[best["name"]].log_model(folder, cfg.register_as,
                                                              cfg.model_alias))
            if cfg.output:
                shutil.copytree(folder, cfg.output, dirs_exist_ok=True)
                summary["output"] = str(Path(cfg.output).absolute())
        if cfg.search != "none":
            job_run.log_metrics({f"best_dev_{k}": v for k, v in best["result"]["best"].items()},
                                step=0)
            job_run.set_tag(BEST_TRIAL_TAG, best["run_id"] or best["name"])
        job_run.finish("FINISHED")
        summary["checkpoint"] = best["checkpoint"].path
        return summary


@contextlib.contextmanager
def _no_ray():
    """Local mode (num_workers 0): trials run in this process, no Ray cluster."""
    yield False

