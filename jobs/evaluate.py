"""`bertpipe evaluate` / `python -m jobs.evaluate`: a fine-tuned model on a data file.

Takes a model (MLflow URI or HF folder), reads the data exactly as its fine-tuning did (the
`bertpipe_task.json` saved with the model: columns, labels, lengths, SQuAD 2.0 threshold;
options override it, and `--task` describes a model fine-tuned elsewhere), runs inference in
this process (GPU when there is one), and writes one prediction per example (JSONL, or
Parquet when the file name says so) next to the gold answer. Metrics and the predictions file
are logged to an MLflow run tagged with the model's URI and the run that produced it. The
last line of stdout is one JSON object: the run id, the metrics, the predictions path.

Example: bertpipe evaluate --model models:/wiki-topics@best --input test.jsonl
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from jobs.config import ConfigError
from jobs.finetune.config import FinetuneConfig
from jobs.finetune.tasks import (
    TaskSpec,
    build_model,
    featurize,
    read_examples,
    spec_from_config,
    tokenizer_for,
)
from jobs.tracking import PARENT_TAG, Tracker, default_tracking_uri
from jobs.train.sources import resolve_model
from model.config import BertConfig

# options that, when given, override what the model's bertpipe_task.json says
SPEC_OVERRIDES = ("text_column", "text_pair_column", "label_column", "choice_columns", "labels",
                  "max_seq_length", "doc_stride", "max_query_length", "max_answer_length",
                  "null_threshold")


@dataclass
class EvaluateConfig:
    RENAMED: ClassVar[dict[str, str]] = {"data": "input"}
    PATHS = ("model", "input", "predictions")  # jobs.train.paths
    model: str = ""
    """The model: an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH) or a
    HF folder"""
    input: str = ""
    """Data to evaluate on: JSONL, CSV/TSV, Parquet, SQuAD JSON or CoNLL; local or s3://"""
    task: Literal["classification", "token-classification", "question-answering",
                  "multiple-choice"] | None = None
    """The task (default: the one the model was fine-tuned for)"""
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "squad", "conll"] = "auto"
    """Data format (auto: from the file name)"""
    text_column: str | None = None
    """Column of the (first) text (default: the model's)"""
    text_pair_column: str | None = None
    """Column of the second text (default: the model's)"""
    label_column: str | None = None
    """Column of the gold label (default: the model's)"""
    choice_columns: list[str] | None = None
    """Multiple-choice ending columns (default: the model's)"""
    labels: list[str] | None = None
    """Label names in output order (default: the model's)"""
    max_seq_length: int | None = None
    """Tokens per sequence (default: the model's fine-tuning length)"""
    doc_stride: int | None = None
    """question-answering: tokens between window starts (default: the model's)"""
    max_query_length: int | None = None
    """question-answering: question tokens kept (default: the model's)"""
    max_answer_length: int | None = None
    """question-answering: longest answer in tokens (default: the model's)"""
    null_threshold: float | None = None
    """SQuAD 2.0: answer "no answer" when null - best span score exceeds this (default: the
    threshold tuned on dev during fine-tuning)"""
    max_examples: int | None = None
    """Evaluate only the first N examples"""
    batch_size: int = 64
    """Examples per forward pass"""
    predictions: str | None = None
    """Where to write the predictions (.jsonl or .parquet; default:
    out/evaluate/RUN_NAME/predictions.jsonl)"""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: a SQLite file mlflow.db in the current directory)"""
    experiment: str = "bertpipe-evaluate"
    """MLflow experiment"""
    run_name: str | None = None
    """MLflow run name (default: from the model, data and time)"""
    parent_run_id: str | None = None
    """Nest this job's MLflow run under this run (a workflow's)"""

    def validate(self) -> EvaluateConfig:
        if not self.model:
            raise ConfigError("no model given: pass --model URI_OR_DIR")
        if not self.input:
            raise ConfigError("no input given: pass --input FILE")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1 (got {self.batch_size})")
        return self


def task_spec(cfg: EvaluateConfig, hf_dir: Path) -> TaskSpec:
    """The model's saved spec with the options' overrides, or one built from the options."""
    spec = TaskSpec.load(hf_dir)
    if spec is None:
        if not cfg.task:
            raise ConfigError(f"{cfg.model} has no bertpipe_task.json (not fine-tuned by "
                              "bertpipe): pass --task and the column options")
        spec = spec_from_config(FinetuneConfig(task=cfg.task))
        head = BertConfig.from_json(hf_dir / "config.json")
        if spec.task in ("classification", "token-classification") and not cfg.labels:
            if head.id2label is None:
                raise ConfigError(f"{cfg.model}: config.json has no id2label; pass --labels")
            spec.labels = [head.id2label[i] for i in range(len(head.id2label))]
        spec.regression = spec.task == "classification" and head.num_labels == 1
    elif cfg.task and cfg.task != spec.task:
        raise ConfigError(f"{cfg.model} was fine-tuned for {spec.task}, not {cfg.task}")
    overrides = {k: getattr(cfg, k) for k in SPEC_OVERRIDES if getattr(cfg, k) is not None}
    return dataclasses.replace(spec, **overrides)


def _gold(spec: TaskSpec, row: dict):
    if spec.task == "question-answering":
        return [a["text"] for a in row["answers"]]
    return row[spec.label_column]


def write_predictions(path: str, records: list[dict]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        # nested values (token tags, answers) as JSON text: one flat, stable schema
        table = pa.Table.from_pylist([{k: v if isinstance(v, (str, int, float, type(None)))
                                       else json.dumps(v) for k, v in r.items()}
                                      for r in records])
        pq.write_table(table, out)
    else:
        with open(out, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def run(cfg: EvaluateConfig) -> dict:
    import torch

    from jobs.finetune.predict import check_metric, infer, score
    from jobs.train.device import use_gpu
    cfg.validate()
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    source = resolve_model(cfg.model, tracking_uri)
    spec = task_spec(cfg, source.hf_dir)
    check_metric(spec)
    tok, vocab, _ = tokenizer_for(source.hf_dir)
    rows = read_examples(spec, cfg.input, cfg.format, cfg.max_examples)
    features = featurize(spec, tok, vocab, rows, cfg.input, training=False)
    device = torch.device("cuda" if use_gpu(None, ray_running=False) else "cpu")
    net = build_model(spec, source.hf_dir).to(device)
    started = time.perf_counter()
    raw = infer(net, spec, features, range(len(features)), cfg.batch_size, device)
    predictions, metrics = score(spec, rows, features, raw)
    seconds = time.perf_counter() - started
    run_name = cfg.run_name or f"evaluate-{Path(cfg.input).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = cfg.predictions or str(Path("out/evaluate") / run_name / "predictions.jsonl")
    write_predictions(path, [{**p, "gold": _gold(spec, r)} for p, r in zip(predictions, rows)])
    print(f"[evaluate] {len(rows)} examples in {seconds:.1f}s: "
          + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr, flush=True)

    tags = {"bertpipe.job": "evaluate", "bertpipe.task": spec.task, "bertpipe.model": source.uri,
            "bertpipe.data": str(cfg.input)}
    if source.run_id:
        tags["bertpipe.model_run_id"] = source.run_id
    if source.registered:
        tags["bertpipe.model_version"] = source.registered
    if cfg.parent_run_id:
        tags[PARENT_TAG] = cfg.parent_run_id
    job_run = Tracker(tracking_uri, cfg.experiment, run_name, tags)
    run_id = job_run.open({**dataclasses.asdict(cfg), "examples": len(rows),
                           "spec": dataclasses.asdict(spec)})
    job_run.log_metrics({**metrics, "seconds": seconds}, step=0)
    job_run.log_artifact(path, "predictions")
    job_run.finish("FINISHED")
    return {"run_id": run_id, "run_name": run_name, "task": spec.task, "model": source.uri,
            "examples": len(rows), "metrics": metrics, "predictions": str(Path(path).absolute())}


if __name__ == "__main__":
    from jobs.cli import main
    sys.exit(main(["evaluate", *sys.argv[1:]]))
