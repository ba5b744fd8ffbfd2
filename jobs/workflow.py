"""`bertpipe workflow run WORKFLOW.yaml`: prepare -> pretrain (phase 1, optional phase 2) ->
fine-tune -> evaluate, as one idempotent job.

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

from jobs.config import ConfigError, apply_set, from_dict, read_yaml, values_for
from pipeline.config import OUTPUT_FIELDS, PrepareConfig
from pipeline.storage import exists, expand_inputs, is_remote, join, read_text, write_file_atomic


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
    """`bertpipe evaluate` keys per data file (the model is the task's fine-tuned one)"""

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


PATH_KEYS = ("input", "train", "validation", "data", "vocab")


def _absolute(value):
    """Local relative paths made absolute: stage jobs run in workers with other cwds."""
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    if isinstance(value, str) and not is_remote(value) and not Path(value).is_absolute():
        return str(Path(value).absolute())
    return value


def _absolute_paths(wf: Workflow) -> Workflow:
    wf.storage = _absolute(wf.storage)
    if wf.tracking_uri and wf.tracking_uri.startswith("sqlite:///") \
            and not wf.tracking_uri.startswith("sqlite:////"):
        wf.tracking_uri = f"sqlite:///{Path(wf.tracking_uri[len('sqlite:///'):]).absolute()}"
    sections = [wf.prepare, wf.pretrain, *(wf.finetune or []), *(wf.evaluate or [])]
    if wf.pretrain_phase2:
        sections += [wf.pretrain_phase2, wf.pretrain_phase2.get("prepare") or {}]
    for section in sections:
        for key in PATH_KEYS:
            if section.get(key):
                section[key] = _absolute(section[key])
    return wf


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Runner:
    """Runs stages once per content hash, recording results under the workflow's storage."""

    def __init__(self, wf: Workflow):
        from jobs.tracking import default_tracking_uri
        self.wf = wf
        self.tracking_uri = wf.tracking_uri or default_tracking_uri()
        self.markers = join(wf.storage, "workflows", wf.name)
        self.stages: list[dict] = []
        self.parent_run_id = self._parent_run()

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
            log(f"{name}: done before for this config ({key[:12]}), skipped")
            self.stages.append({"stage": name, "status": "skipped", **result})
            return result
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
        cfg = from_dict(PrepareConfig, {**values_for("prepare", values), "output": "-",
                                        "address": wf.address}, origin=f"workflow {label}")
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
        cfg = from_dict(PretrainConfig, settings, origin=f"workflow {label}").validate()

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
        cfg = from_dict(FinetuneConfig, settings, origin=f"workflow finetune[{index}]")

        def run():
            from jobs.finetune.driver import run as finetune
            return finetune(cfg)
        return {**self.stage(f"finetune-{index}-{task}", key, run), "key": key}

    def evaluate(self, index: int, values: dict, model_uri: str, upstream: str) -> dict:
        from jobs.evaluate import EvaluateConfig
        from jobs.evaluate import run as evaluate
        wf = self.wf
        settings = {"model": model_uri, **values, "tracking_uri": self.tracking_uri,
                    "experiment": wf.name}
        key = _key("evaluate", index, settings, upstream)
        settings.update(run_name=f"{wf.name}-evaluate-{index}-{key[:8]}",
                        parent_run_id=self.parent_run_id,
                        predictions=join(wf.storage, "evaluate",
                                         f"{wf.name}-{index}-{key[:12]}-predictions.jsonl"))
        cfg = from_dict(EvaluateConfig, settings, origin=f"workflow evaluate[{index}]")
        return {**self.stage(f"evaluate-{index}", key, lambda: evaluate(cfg)), "key": key}


def _model_uri(result: dict) -> str:
    return result.get("registered_uri") or result.get("model_uri") or result["checkpoint"]


def run(wf: Workflow) -> dict:
    """Run every stage not yet done for its config; returns the summary. One Ray session
    serves every stage."""
    from jobs.train.runtime import ray_session, worker_env
    runner = Runner(wf)
    paths = [wf.storage, *_paths(wf.prepare), *[p for f in wf.finetune for p in _paths(f)],
             *[p for e in wf.evaluate for p in _paths(e)]]
    try:
        with ray_session(wf.address, worker_env(paths, runner.tracking_uri)):
            _run_stages(wf, runner)
    except BaseException:
        runner.finish("FAILED")
        raise
    runner.finish("FINISHED")
    return {"workflow": wf.name, "parent_run_id": runner.parent_run_id,
            "tracking_uri": runner.tracking_uri, "stages": runner.stages}


def _paths(section: dict) -> list[str]:
    out = []
    for key in PATH_KEYS:
        value = section.get(key)
        out += value if isinstance(value, list) else [value] if value else []
    return [str(v) for v in out]


def _run_stages(wf: Workflow, runner: Runner) -> None:
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
        runner.evaluate(i, {k: v for k, v in values.items() if k != "model"}, model,
                        source["key"] if source else "")


def ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:"):
        return (f"open the MLflow UI: .venv/bin/mlflow ui --backend-store-uri {tracking_uri} "
                f"--host 127.0.0.1 --port 5000, then http://127.0.0.1:5000")
    return f"open the MLflow UI: {tracking_uri}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertpipe workflow",
                                description="Run prepare -> pretrain -> finetune -> evaluate.")
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="run the stages not yet done for their config")
    r.add_argument("file", type=Path, help="workflow YAML (e.g. jobs/workflows/demo.yaml)")
    r.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a value, dotted: pretrain.max_steps=10")
    r.add_argument("--storage", help="override the workflow's storage root")
    r.add_argument("--tracking-uri", help="override the workflow's MLflow tracking URI")
    r.add_argument("--address", help="Ray cluster address")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    for key in ("storage", "tracking_uri", "address"):
        if getattr(args, key):
            overrides.append(f"{key}={getattr(args, key)}")
    wf = load(args.file, overrides)
    summary = run(wf)
    log(ui_hint(summary["tracking_uri"]))
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    from jobs.cli import main as cli
    sys.exit(cli(["workflow", *sys.argv[1:]]))
