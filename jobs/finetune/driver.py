"""`bertpipe finetune` / `python -m jobs.finetune`: a pretrained BERT fine-tuned on a task.

The driver resolves the config (preset < --config < --set < flags), gets the model (MLflow
URI or HF folder: `jobs.train.sources`), reads and featurizes the train and dev files with
the model's own vocab (`jobs.finetune.tasks`), and puts the features in the Ray object store
once for every fit and worker. The fits are settings (one, or a search grid) x seeds
(`--seeds N`) x sides (the pretrained model, and with `--baseline scratch` the same
architecture from random initialization), all run as parallel trials
(`jobs.finetune.trials`), each a Ray Train fit of `jobs.finetune.loop.train_loop`.
MLflow: the job's run is the pretrained side; the baseline's run (NAME-scratch) is its
sibling (same parent), tagged `bertpipe.baseline_of`. A side with one fit is that fit's run;
with several, each fit is a child run of its side's run. Each side picks its own setting by
the mean dev metric over seeds (`jobs.finetune.compare`); every seed's model at that setting
is logged on its fit's run (for the workflow's test evaluation), the best seed's registered
(`--register-as NAME`; the baseline as NAME-scratch), and `--output` gets a copy of the
pretrained side's. `gain_over_scratch` (seed-paired mean, and its std) goes on the job's run.
The last line of stdout is one JSON object: the run id, the best dev metrics with their mean
and std over seeds, the model URIs, each fit's result, the baseline's part and the gain.

Example: bertpipe finetune --task classification --model models:/bert-wiki@phase1 \
    --train train.jsonl --validation dev.jsonl --search paper --register-as wiki-topics \
    --baseline scratch --seeds 3
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from pathlib import Path

from jobs.config import ConfigError
from jobs.finetune.compare import Side, format_mean_std, mean_std, paired_gain, pick
from jobs.finetune.config import FinetuneConfig, fit_name
from jobs.finetune.predict import check_metric
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
from model import BertConfig
from pipeline.errors import InputError

BEST_TRIAL_TAG = "bertpipe.best_trial"
INIT_TAG = "bertpipe.init"                  # pretrained or scratch: where a fit's weights began
BASELINE_OF_TAG = "bertpipe.baseline_of"    # on the scratch run: the pretrained side's run id
BASELINE_RUN_TAG = "bertpipe.baseline_run"  # on the job's run: its scratch baseline's run id
ARCHITECTURE_TAG = "bertpipe.architecture_of"  # on the scratch run: whose config.json it used


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


def _trial(o: dict, metric: str) -> dict:
    out = {"name": o["name"], "run_id": o["run_id"], **o["trial"]}
    if "error" in o:
        return {**out, "error": o["error"]}
    return {**out, f"dev_{metric}": (o["result"].get("best") or {}).get(metric),
            "best_epoch": o["result"].get("best_epoch"),
            "trained": o["result"].get("trained"), "seconds": o["result"].get("seconds")}


def _side_metrics(picked: Side) -> dict:
    """What a side's run and summary report: the best model's dev metrics, the mean and
    standard deviation of the task metric over the seeds at the side's setting."""
    mean, std = mean_std(picked.values.values())
    return {**{f"dev_{k}": v for k, v in picked.best["result"]["best"].items()},
            f"dev_{picked.metric}_mean": mean, f"dev_{picked.metric}_std": std}


def run(cfg: FinetuneConfig) -> dict:
    cfg.validate()
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    run_name = cfg.run_name or cfg.default_run_name()
    source = resolve_model(cfg.model, tracking_uri)
    log(f"model {source.uri} -> {source.hf_dir}"
        + (f" (run {source.run_id}{', ' + source.registered if source.registered else ''})"
           if source.run_id else ""))
    if cfg.reinit_layers:
        layers = BertConfig.from_json(Path(source.hf_dir) / "config.json").num_hidden_layers
        if cfg.reinit_layers > layers:
            raise ConfigError(f"reinit_layers {cfg.reinit_layers}: {cfg.model} has only "
                              f"{layers} layers")
        log(f"pretrained side: the pooler and the top {cfg.reinit_layers} of {layers} layers "
            "re-initialized")
    spec, data = load_data(cfg, source)

    env = worker_env((cfg.model, cfg.train, cfg.validation, cfg.storage_path), tracking_uri)
    session = ray_session(cfg.address, env) if cfg.num_workers else _no_ray()
    with session:
        gpu = use_gpu(cfg.use_gpu, ray_running=cfg.num_workers > 0)
        if cfg.num_workers:
            import ray
            data_ref = ray.put(data)  # once: every fit and worker reads the same object
        else:
            data_ref = data  # local mode: the fits run in this process
        params = {**dataclasses.asdict(cfg), "run_name": run_name, "use_gpu": gpu,
                  "labels": spec.labels, "regression": spec.regression, "metric": spec.metric,
                  "train_features": len(data["train"]), "dev_features": len(data["dev"])}
        sides = _open_sides(cfg, spec, source, run_name, tracking_uri, params)
        fits, jobs = cfg.trials(), []
        single = len(fits) == 1 and cfg.seeds == 1
        log(f"run {run_name}: MLflow run {sides['pretrained'].run_id} at {tracking_uri}; "
            f"{len(fits)} setting(s) x {cfg.seeds} seed(s) x {len(sides)} side(s)")
        loop_config = {"config": dataclasses.asdict(cfg), "spec": dataclasses.asdict(spec),
                       "data": data_ref, "model_dir": str(source.hf_dir),
                       "tracking_uri": tracking_uri}
        fit_runs = {}
        for setting in fits:
            for seed in cfg.seed_list():
                for side, side_run in sides.items():
                    trial = {**setting, "seed": seed, "init": side}
                    name = fit_name(side_run.run_name, trial, cfg.search != "none", cfg.seeds)
                    fit_runs[name] = side_run if single else side_run.child(name, trial)
                    jobs.append(TrialJob(name, trial, fit_runs[name].run_id, loop_config,
                                         cfg.num_workers, cfg.cpus_per_worker, gpu,
                                         cfg.storage_path))

        def fit_done(outcome: dict) -> None:
            if fit_runs[outcome["name"]] not in sides.values():
                fit_runs[outcome["name"]].finish("FAILED" if "error" in outcome else "FINISHED")
        outcomes = run_trials(jobs, cfg.max_concurrent_trials, on_done=fit_done)
        for o in outcomes:
            if "error" in o:
                log(o["error"])  # "trial NAME failed: ..."
        picked = {side: pick(outcomes, spec.metric, side) for side in sides}
        if picked["pretrained"] is None:
            for side_run in sides.values():
                side_run.finish("FAILED")
            first = next((o["error"] for o in outcomes if "error" in o), "no dev metrics")
            raise JobFailed(f"no trial produced a model (first error: {first})")
        summary = {"run_id": sides["pretrained"].run_id, "run_name": run_name,
                   "task": spec.task, "metric": spec.metric}
        for side, side_run in sides.items():
            if picked[side] is None:
                log(f"every {side} fit failed: no baseline to compare with")
                side_run.finish("FAILED")
                continue
            report = _finish_side(cfg, picked[side], side_run, fit_runs, single)
            report["trials"] = [_trial(o, spec.metric) for o in outcomes
                                if o["trial"]["init"] == side]
            if side == "pretrained":
                summary.update(report)
            else:
                summary[side] = report
        if picked.get("scratch") is not None:
            gain = paired_gain(picked["pretrained"].values, picked["scratch"].values,
                               spec.metric)
            summary.update(gain_over_scratch=gain["mean"], gain_over_scratch_std=gain["std"],
                           gains={str(k): v for k, v in gain["values"].items()})
            scratch_mean, scratch_std = mean_std(picked["scratch"].values.values())
            summary["metrics"].update({f"scratch_dev_{spec.metric}": scratch_mean,
                                       f"scratch_dev_{spec.metric}_std": scratch_std,
                                       "gain_over_scratch": gain["mean"],
                                       "gain_over_scratch_std": gain["std"]})
            sides["pretrained"].log_metrics({"gain_over_scratch": gain["mean"],
                                             "gain_over_scratch_std": gain["std"]}, step=0)
            log(f"dev {spec.metric}: pretrained "
                f"{format_mean_std(*mean_std(picked['pretrained'].values.values()), cfg.seeds)}"
                f", scratch {format_mean_std(scratch_mean, scratch_std, cfg.seeds)}; gain "
                f"over scratch {format_mean_std(gain['mean'], gain['std'], cfg.seeds)}")
        for side_run in sides.values():
            side_run.finish("FINISHED")
        return summary


def _open_sides(cfg: FinetuneConfig, spec, source, run_name: str, tracking_uri: str,
                params: dict) -> dict[str, Tracker]:
    """The job's run (the pretrained side) and, with a baseline, the scratch side's run: a
    sibling (same parent), tagged as the baseline of the job's run."""
    tags = {"bertpipe.job": "finetune", "bertpipe.task": spec.task}
    if cfg.parent_run_id:
        tags[PARENT_TAG] = cfg.parent_run_id
    job_run = Tracker(tracking_uri, cfg.experiment, run_name,
                      {**tags, **source.tags(), INIT_TAG: "pretrained"})
    job_run.open(params, cfg.to_yaml(), "finetune.yaml")
    sides = {"pretrained": job_run}
    if cfg.baseline == "scratch":
        scratch = Tracker(tracking_uri, cfg.experiment, f"{run_name}-scratch",
                          {**tags, INIT_TAG: "scratch", BASELINE_OF_TAG: job_run.run_id or "",
                           ARCHITECTURE_TAG: source.uri})
        scratch.open({**params, "init": "scratch"}, cfg.to_yaml(), "finetune.yaml")
        job_run.set_tag(BASELINE_RUN_TAG, scratch.run_id or "")
        sides["scratch"] = scratch
    return sides


def _finish_side(cfg: FinetuneConfig, picked: Side, side_run: Tracker, fit_runs: dict,
                 single: bool) -> dict:
    """Log every seed's model at the side's setting on its fit's run (the best seed's
    registered: the pretrained side as --register-as, the scratch side as NAME-scratch), the
    side's metrics on its run; returns the side's part of the summary."""
    metrics = _side_metrics(picked)
    best = picked.best
    register = cfg.register_as and (cfg.register_as if picked.side == "pretrained"
                                    else f"{cfg.register_as}-scratch")
    report: dict = {"run_id": side_run.run_id, "run_name": side_run.run_name,
                    "metrics": metrics, "setting": picked.setting,
                    "dev": {str(k): v for k, v in picked.values.items()},
                    "best_trial": None, "models": []}
    for seed, fit in sorted(picked.fits.items()):
        is_best = fit is best
        with fit["checkpoint"].as_directory() as folder:
            logged = fit_runs[fit["name"]].log_model(folder, register if is_best else None,
                                                     cfg.model_alias)
            if is_best and picked.side == "pretrained" and cfg.output:
                shutil.copytree(folder, cfg.output, dirs_exist_ok=True)
                report["output"] = str(Path(cfg.output).absolute())
        report["models"].append({"seed": seed, "run_id": fit["run_id"],
                                 f"dev_{picked.metric}": picked.value(seed),
                                 "model_uri": logged.get("model_uri"),
                                 "checkpoint": fit["checkpoint"].path})
        if is_best:
            report.update(logged)
            report["checkpoint"] = fit["checkpoint"].path
            report["best_trial"] = _trial(fit, picked.metric)
    side_run.log_metrics(metrics if not single else
                         {k: v for k, v in metrics.items() if k.endswith(("_mean", "_std"))},
                         step=0)
    if not single:
        side_run.log_metrics({f"best_dev_{k}": v for k, v in best["result"]["best"].items()},
                             step=0)
        side_run.set_tag(BEST_TRIAL_TAG, best["run_id"] or best["name"])
    return report


@contextlib.contextmanager
def _no_ray():
    """Local mode (num_workers 0): trials run in this process, no Ray cluster."""
    yield False

