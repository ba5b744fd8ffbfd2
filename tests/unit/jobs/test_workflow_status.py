"""`bertpipe workflow status`: what a run would do, without running, Ray or MLflow."""
from __future__ import annotations

import json

import yaml

from jobs.workflow import load
from jobs.workflow_status import stage_names
from tests.helpers import job


def _workflow(tmp_path, wiki_jsonl) -> str:
    wf = {"name": "st", "storage": "store", "tracking_uri": "sqlite:///st.db",
          "prepare": {"input": [str(wiki_jsonl)], "format": "jsonl", "vocab_size": 2000},
          "pretrain": {"preset": "pretrain-bert-tiny-cpu", "max_steps": 6},
          "pretrain_phase2": {"max_steps": 2, "prepare": {"max_seq_length": 256}},
          "finetune": [{"task": "classification", "train": "t.jsonl", "validation": "d.jsonl"},
                       {"task": "question-answering", "train": "q.json", "validation": "q.json"}],
          "evaluate": [{"task": "classification", "input": "e.jsonl"}],
          "probe": [{"train": "t.jsonl", "validation": "d.jsonl", "test": "e.jsonl"}]}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(wf))
    return str(path)


def test_a_new_workflow_is_all_to_run_and_status_starts_nothing(tmp_path, wiki_jsonl,
                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = _workflow(tmp_path, wiki_jsonl)
    assert job("workflow")(["status", path]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    names = ["prepare", "pretrain-phase1", "prepare-phase2", "pretrain-phase2",
             "finetune-0-classification", "finetune-1-question-answering", "evaluate-0",
             "probe-0"]
    assert [s["stage"] for s in report["stages"]] == names == stage_names(load(path))
    assert {s["status"] for s in report["stages"]} == {"to run"}
    assert (report["done"], report["total"]) == (0, 8)
    assert "st: 0 of 8 stages done for this config" in err
    # nothing written: no MLflow store, no storage, no markers
    assert not (tmp_path / "st.db").exists() and not (tmp_path / "store").exists()


def test_status_names_a_missing_workflow_file_in_one_line(tmp_path, capsys):
    assert job("workflow")(["status", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
