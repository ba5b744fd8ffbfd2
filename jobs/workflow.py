"""`bertpipe workflow run WORKFLOW.yaml`: prepare -> pretrain (phase 1, optional phase 2) ->
fine-tune -> evaluate, as one idempotent job (`bertpipe workflow status WORKFLOW.yaml`, in
`jobs.workflow_status`, says which stages are done and which a run would start).

Each stage's config is resolved (its preset, the workflow's keys, what earlier stages made)
and hashed with the keys of the stages it depends on. A stage that finished for that hash
left a marker under `STORAGE/workflows/NAME/` holding its result, so a rerun skips it and a
crashed workflow picks up at the first unfinished stage (which itself resumes: prepare
redoes its partial output, pretraining restarts from its last checkpoint). MLflow gets one
parent run per workflow (named after it, reused on reruns) and each stage's runs nested
under it. Runs in-process on local Ray, or as one Ray job (`bertpipe submit -- bertpipe
workflow run FILE`). Never trains or reads data itself: the stage jobs do.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs.config import ConfigError, apply_set, from_dict, read_yaml, renamed, values_for
from jobs.finetune.results import combine, evaluation_models, headline
from jobs.train.paths import absolute, absolute_paths, absolute_tracking_uri, path_fields
from pipeline.config import OUTPUT_FIELDS, PrepareConfig
from pipeline.storage import exists, expand_inputs, join, read_text, write_file_atomic


def log(msg: str) -> None:
    print(f"[workflow] {msg}", file=sys.stderr, flush=True)


@dataclass
class Workflow:
    name: str = ""
    """Workflow name: MLflow experiment, parent run, registered model names"""
    storage: str = "out/workflows"
    """Root folder (local or s3://) of every stage's output, checkpoints and markers"""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite file mlflow.db)"""
    address: str | None = None
    """Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)"""
    prepare: dict = field(default_factory=dict)
    """`bertpipe prepare` keys for phase 1's data (output is chosen by the workflow)"""
    pretrain: dict = field(default_factory=dict)
    """`bertpipe pretrain` keys for phase 1 (`preset: NAME` picks a shipped preset)"""
    pretrain_phase2: dict | None = None
    """Phase 2 keys, with `prepare:` overrides for its data (vocab comes from phase 1)"""
    finetune: list[dict] = field(default_factory=list)
    """`bertpipe finetune` keys per task (the model is the pretrained one unless given)"""
    evaluate: list[dict] = field(default_factory=list)
    """`bertpipe evaluate` keys per data file (the model is the task's fine-tuned one; with
    seeds or a baseline, every seed's model of each side)"""
    probe: list[dict] = field(default_factory=list)
    """`bertpipe probe` keys per data set (the model is the pretrained one unless given)"""

    def validate(self) -> "Workflow":
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"workflow name {self.name!r}: use letters, digits, '-', '_', '.'")
        if not self.prepare:
            raise ConfigError("workflow: a 'prepare' section is required")
        return self


def load(path: str | Path, overrides: list[str] = ()) -> Workflow:
    """The workflow file with `--set a.b.0.c=VALUE` overrides applied, paths made absolute."""
    values = read_yaml(path, "workflow file")
    for item in overrides:
        apply_set(values, item)
    names = {f.name for f in dataclasses.fields(Workflow)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"workflow {path}: unknown key '{unknown[0]}' (known: "
                          f"{', '.join(sorted(names))})")
    return _absolute_paths(Workflow(**values).validate())


def _sections(wf: Workflow) -> list[tuple[str, dict]]:
    """(command, section) of every stage section, for their path fields."""
    out = [("prepare", wf.prepare), ("pretrain", wf.pretrain),
           *[("finetune", f) for f in wf.finetune or []],
           *[("evaluate", e) for e in wf.evaluate or []], *[("probe", p) for p in wf.probe or []]]
    if wf.pretrain_phase2:
        out += [("pretrain", wf.pretrain_phase2),
                ("prepare", wf.pretrain_phase2.get("prepare") or {})]
    return out


def _absolute_paths(wf: Workflow) -> Workflow:
    """Local relative paths made absolute (`jobs.train.paths`, each section by its job's path
    fields): stage jobs run in workers with other working directories."""
    wf.storage = absolute(wf.storage)
    wf.tracking_uri = absolute_tracking_uri(wf.tracking_uri)
    for command, section in _sections(wf):
        for key in _path_keys(command):
            if section.get(key):
                section[key] = absolute(section[key])
    return wf


def _path_keys(command: str) -> list[str]:
    """A job's path fields and their deprecated spellings (evaluate's `data`)."""
    from jobs.cli import config_class
    cls = config_class(command)
    names = path_fields(cls)
    return [*names, *(old for old, new in renamed(cls).items() if new in names)]


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Pending(Exception):
    """`workflow status`: this stage is not done, and every later stage depends on it."""


class Runner:
    """Runs stages once per content hash, recording results under the workflow's storage.
    With plan=True (`workflow status`) it runs nothing and opens no MLflow run: done stages
    give their recorded results, the first stage not done raises `Pending`."""

    def __init__(self, wf: Workflow, plan: bool = False):
        from jobs.tracking import default_tracking_uri
        self.wf = wf
        self.plan = plan
        self.tracking_uri = wf.tracking_uri or default_tracking_uri()
        self.markers = join(wf.storage, "workflows", wf.name)
        self.stages: list[dict] = []
        self.parent_run_id = None if plan else self._parent_run()

    def _parent_run(self) -> str | None:
        from jobs.tracking import client, get_or_create_run
        try:
            run_id, created = get_or_create_run(client(self.tracking_uri), self.wf.name,
                                                f"workflow-{self.wf.name}",
                                                tags={"bertpipe.job": "workflow"})
        except Exception as e:  # MLflow down: the stages still run and log when it is back
            log(f"warning: MLflow at {self.tracking_uri} unreachable ({type(e).__name__}); "
                f"no parent run")
            return None
        log(f"MLflow parent run {run_id} ({'new' if created else 'resumed'}) in experiment "
            f"'{self.wf.name}' at {self.tracking_uri}")
        return run_id

    def stage(self, name: str, key: str, fn) -> dict:
        marker = join(self.markers, f"{name}-{key[:16]}.json")
        if exists(marker):
            result = json.loads(read_text(marker))
            if not self.plan:
                log(f"{name}: done before for this config ({key[:12]}), skipped")
            self.stages.append({"stage": name, "status": "done" if self.plan else "skipped",
                                **result})
            return result
        if self.plan:
            self.stages.append({"stage": name, "status": "to run"})
            raise Pending(name)
        log(f"{name}: running ({key[:12]})")
        started = time.time()
        result = fn()
        result["seconds"] = round(time.time() - started, 1)
        write_file_atomic(marker, (json.dumps(result, indent=2, default=str) + "\n").encode())
        self.stages.append({"stage": name, "status": "ran", **result})
        self._tag(f"stage.{name}", "done")
        return result

    def _tag(self, key: str, value: str) -> None:
        if self.parent_run_id:
            from jobs.tracking import client
            try:
                client(self.tracking_uri).set_tag(self.parent_run_id, key, value)
            except Exception:
                pass

    def finish(self, status: str) -> None:
        if self.parent_run_id:
            from jobs.tracking import client
            try:
                c = client(self.tracking_uri)
                c.log_text(self.parent_run_id, json.dumps(self.stages, indent=2, default=str),
                           "workflow_stages.json")
                c.set_terminated(self.parent_run_id, status)
            except Exception as e:
                log(f"warning: could not close the MLflow parent run ({type(e).__name__})")

    # -- stages --------------------------------------------------------------------------
    def prepare(self, label: str, values: dict) -> dict:
        wf = self.wf
        cfg = _config(PrepareConfig, {**values_for("prepare", values), "output": "-",
                                      "address": wf.address}, f"workflow {label}")
        inputs = expand_inputs(cfg.input)
        options = {k: v for k, v in dataclasses.asdict(cfg).items() if k in OUTPUT_FIELDS}
        key = _key(label, options, inputs)
        cfg.output = join(wf.storage, "data", f"{wf.name}-{label}-{key[:12]}")

        def run():
            from jobs.prepare import prepare
            manifest = prepare(cfg)
            return {"output": cfg.output, "counts": manifest.counts,
                    "max_seq_length": cfg.max_seq_length}
        return {**self.stage(label, key, run), "key": key}

    def pretrain(self, label: str, values: dict, data: dict, alias: str,
                 init_from: str | None = None) -> dict:
        from jobs.pretrain.config import PretrainConfig
        wf = self.wf
        values = values_for("pretrain", {k: v for k, v in values.items() if k != "prepare"})
        settings = {**values, "data": data["output"], "experiment": wf.name,
                    "storage_path": join(wf.storage, "checkpoints"),
                    "tracking_uri": self.tracking_uri, "register_as": wf.name,
                    "model_alias": alias, "address": wf.address}
        if init_from:
            settings["init_from"] = init_from
        key = _key(label, settings, data["key"])
        settings.update(run_name=f"{wf.name}-{label}-{key[:8]}",
                        parent_run_id=self.parent_run_id)
        cfg = _config(PretrainConfig, settings, f"workflow {label}").validate()

        def run():
            from jobs.pretrain.driver import run as pretrain
            return pretrain(cfg)
        return {**self.stage(label, key, run), "key": key}

    def finetune(self, index: int, values: dict, model_uri: str, upstream: str) -> dict:
        from jobs.finetune.config import FinetuneConfig
        wf = self.wf
        settings = {"model": model_uri, **values_for("finetune", values), "experiment": wf.name,
                    "tracking_uri": self.tracking_uri, "address": wf.address,
                    "storage_path": join(wf.storage, "finetune")}
        task = settings.get("task", "task")
        settings.setdefault("register_as", f"{wf.name}-{task}")
        key = _key("finetune", index, settings, upstream)
        settings.update(run_name=f"{wf.name}-finetune-{task}-{key[:8]}",
                        parent_run_id=self.parent_run_id)
        cfg = _config(FinetuneConfig, settings, f"workflow finetune[{index}]")

        def run():
            from jobs.finetune.driver import run as finetune
            return finetune(cfg)
        return {**self.stage(f"finetune-{index}-{task}", key, run), "key": key}

    def evaluate(self, index: int, values: dict, model_uri: str, upstream: str,
                 source: dict | None = None) -> dict:
        """One evaluate run of `model_uri`; or, when the fine-tune `source` kept several
        models (seeds, a scratch baseline) and no model is given, one per model nested
        under a stage run that carries both sides' means and the gain (`jobs.finetune.results`)."""
        from jobs.evaluate import EvaluateConfig
        from jobs.evaluate import run as evaluate
        wf = self.wf
        models = [] if "model" in values else evaluation_models(source)
        settings = {"model": model_uri, **values, "tracking_uri": self.tracking_uri,
                    "experiment": wf.name}
        key = _key("evaluate", index, settings, upstream, models)
        name = f"{wf.name}-evaluate-{index}-{key[:8]}"
        metric = (source or {}).get("metric")

        def one(model: str, run_name: str, parent: str | None, suffix: str = "") -> dict:
            path = f"{wf.name}-{index}-{key[:12]}{suffix}-predictions.jsonl"
            cfg = _config(EvaluateConfig, {**settings, "model": model, "run_name": run_name,
                                           "parent_run_id": parent,
                                           "predictions": join(wf.storage, "evaluate", path)},
                          f"workflow evaluate[{index}]")
            return {**evaluate(cfg), **({"metric": metric} if metric else {})}

        def run_all() -> dict:
            from jobs.tracking import PARENT_TAG, Tracker
            tags = {"bertpipe.job": "evaluate", **({PARENT_TAG: self.parent_run_id}
                                                   if self.parent_run_id else {})}
            stage_run = Tracker(self.tracking_uri, wf.name, name, tags)
            stage_run.open({**values, "models": [m[2] for m in models]})
            results: dict[str, dict[int, dict]] = {}
            for side, seed, uri in models:
                results.setdefault(side, {})[seed] = one(
                    uri, f"{name}-{side}-seed{seed}", stage_run.run_id, f"-{side}-seed{seed}")
            out = combine(results, metric)
            stage_run.log_metrics(out["metrics"], step=0)
            stage_run.finish("FINISHED")
            first = next(iter(results["pretrained"].values()))
            log(f"evaluate[{index}] {metric}: "
                + describe(out["metrics"], metric, len(results["pretrained"])))
            return {"run_id": stage_run.run_id, "run_name": name, "task": first["task"],
                    "examples": first["examples"], **out}
        run = run_all if len(models) > 1 else lambda: one(model_uri, name, self.parent_run_id)
        return {**self.stage(f"evaluate-{index}", key, run), "key": key}

    def probe(self, index: int, values: dict, model_uri: str, upstream: str) -> dict:
        from jobs.probe import ProbeConfig
        from jobs.probe import run as probe
        wf = self.wf
        settings = {"model": model_uri, **values, "tracking_uri": self.tracking_uri,
                    "experiment": wf.name}
        key = _key("probe", index, settings, upstream)
        settings.update(run_name=f"{wf.name}-probe-{index}-{key[:8]}",
                        parent_run_id=self.parent_run_id)
        cfg = _config(ProbeConfig, settings, f"workflow probe[{index}]")
        return {**self.stage(f"probe-{index}", key, lambda: probe(cfg)), "key": key}

    def headline(self) -> dict[str, float]:
        """The stages' headline metrics, logged on the parent run (`jobs.finetune.results`)."""
        metrics = headline(self.stages)
        if self.parent_run_id and metrics:
            from jobs.tracking import Tracker
            parent = Tracker(self.tracking_uri, self.wf.name, f"workflow-{self.wf.name}")
            parent.run_id = self.parent_run_id
            parent.log_metrics(metrics, step=0)
        return metrics


def _config(cls, settings: dict, origin: str):
    """A stage's config from its settings, local paths made absolute (`jobs.train.paths`)."""
    return absolute_paths(from_dict(cls, settings, origin=origin))


def describe(metrics: dict, metric: str, seeds: int) -> str:
    """'pretrained M ± S, scratch M ± S, gain over scratch G ± S' (as far as `metrics` has
    them), for log lines and the demo's report."""
    from jobs.finetune.compare import format_mean_std

    def part(label: str, key: str) -> str:
        return f"{label} {format_mean_std(metrics[key], metrics.get(f'{key}_std', 0), seeds)}"
    parts = [part("pretrained", metric)]
    if f"scratch_{metric}" in metrics:
        parts.append(part("scratch", f"scratch_{metric}"))
    if "gain_over_scratch" in metrics:
        parts.append(part("gain over scratch", "gain_over_scratch"))
    return ", ".join(parts)


def _model_uri(result: dict) -> str:
    return result.get("registered_uri") or result.get("model_uri") or result["checkpoint"]


def run(wf: Workflow) -> dict:
    """Run every stage not yet done for its config; returns the summary. One Ray session
    serves every stage."""
    from jobs.train.runtime import ray_session, worker_env
    runner = Runner(wf)
    paths = [wf.storage, *_paths(wf)]
    try:
        with ray_session(wf.address, worker_env(paths, runner.tracking_uri)):
            run_stages(wf, runner)
    except BaseException:
        try:
            runner.headline()  # what the stages that finished measured
        except Exception as e:  # never hide the stage's own error
            log(f"warning: no headline metrics ({type(e).__name__}: {e})")
        runner.finish("FAILED")
        raise
    metrics = runner.headline()
    runner.finish("FINISHED")
    return {"workflow": wf.name, "parent_run_id": runner.parent_run_id,
            "tracking_uri": runner.tracking_uri, "headline": metrics, "stages": runner.stages}


def _paths(wf: Workflow) -> list[str]:
    """Every path value of every section (remote ones decide which credentials travel)."""
    out = []
    for command, section in _sections(wf):
        for key in _path_keys(command):
            value = section.get(key)
            out += value if isinstance(value, list) else [value] if value else []
    return [str(v) for v in out]


def run_stages(wf: Workflow, runner: Runner) -> None:
    data1 = runner.prepare("prepare", wf.prepare)
    pretrained = None
    if wf.pretrain:
        pretrained = runner.pretrain("pretrain-phase1", wf.pretrain, data1, "phase1")
    if wf.pretrain_phase2:
        if pretrained is None:
            raise ConfigError("workflow: pretrain_phase2 needs a 'pretrain' section")
        overrides = {k: v for k, v in (wf.pretrain_phase2.get("prepare") or {}).items()}
        values2 = {**wf.prepare, **overrides, "vocab": join(data1["output"], "vocab.txt")}
        values2.pop("vocab_size", None)
        data2 = runner.prepare("prepare-phase2", values2)
        pretrained = runner.pretrain("pretrain-phase2", wf.pretrain_phase2, data2, "phase2",
                                     init_from=_model_uri(pretrained))
    tuned: dict[str, dict] = {}
    for i, values in enumerate(wf.finetune):
        model = values.get("model") or (pretrained and _model_uri(pretrained))
        if not model:
            raise ConfigError(f"workflow finetune[{i}]: give 'model' (no pretrain stage)")
        result = runner.finetune(i, {k: v for k, v in values.items() if k != "model"},
                                 model, pretrained["key"] if pretrained else "")
        tuned.setdefault(values.get("task", ""), result)
    for i, values in enumerate(wf.evaluate):
        source = tuned.get(values.get("task", "")) or next(iter(tuned.values()), None)
        model = values.get("model") or (source and _model_uri(source))
        if not model:
            raise ConfigError(f"workflow evaluate[{i}]: give 'model' (no fine-tuned model "
                              f"for task {values.get('task')!r})")
        runner.evaluate(i, {k: v for k, v in values.items() if not (k == "model" and not v)},
                        model, source["key"] if source else "", source)
    for i, values in enumerate(wf.probe):
        model = values.get("model") or (pretrained and _model_uri(pretrained))
        if not model:
            raise ConfigError(f"workflow probe[{i}]: give 'model' (no pretrain stage)")
        runner.probe(i, {k: v for k, v in values.items() if k != "model"}, model,
                     pretrained["key"] if pretrained else "")


def ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:"):
        return (f"open the MLflow UI: .venv/bin/mlflow ui --backend-store-uri {tracking_uri} "
                f"--host 127.0.0.1 --port 5000, then http://127.0.0.1:5000")
    return f"open the MLflow UI: {tracking_uri}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertpipe workflow",
                                description="Run prepare -> pretrain -> finetune -> evaluate, "
                                            "or show which stages are done.")
    sub = p.add_subparsers(dest="action", required=True)
    actions = {"run": "run the stages not yet done for their config",
               "status": "which stages are done for their config, which would run (runs "
                         "nothing)"}
    for action, what in actions.items():
        actions[action] = a = sub.add_parser(action, help=what)
        a.add_argument("file", type=Path, help="workflow YAML (e.g. jobs/workflows/demo.yaml)")
        a.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a value, dotted: pretrain.max_steps=10")
        a.add_argument("--storage", help="override the workflow's storage root")
        a.add_argument("--tracking-uri", help="override the workflow's MLflow tracking URI")
    actions["run"].add_argument("--address", help="Ray cluster address")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    for key in ("storage", "tracking_uri", "address"):
        if getattr(args, key, None):
            overrides.append(f"{key}={getattr(args, key)}")
    wf = load(args.file, overrides)
    if args.action == "status":
        from jobs.workflow_status import print_status
        return print_status(wf)
    summary = run(wf)
    log(ui_hint(summary["tracking_uri"]))
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    from jobs.cli import main as cli
    sys.exit(cli(["workflow", *sys.argv[1:]]))
