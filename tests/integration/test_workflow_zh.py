"""The Chinese workflow (`jobs/workflows/chinese.yaml`, `make demo-zh`) on a small slice:
the shipped file's stages and options, with its data paths pointed at a few hundred
People's Daily articles and reviews and its budgets cut to seconds."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.demo import WORKFLOWS
from jobs.workflow import load, run

pytestmark = pytest.mark.slow


def _slice(src, dest, n):
    lines = src.read_text(encoding="utf-8").splitlines()[:n]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(dest)


@pytest.mark.timeout(600)
def test_the_chinese_workflow_runs_its_stages_on_a_slice(ray_local, tmp_path,
                                                         peoples_daily_jsonl, zh_vocab,
                                                         zh_sentiment, sqlite_tracking):
    corpus = _slice(peoples_daily_jsonl, tmp_path / "pd.jsonl", 150)
    train = _slice(zh_sentiment["train-500"], tmp_path / "train.jsonl", 160)
    dev = _slice(zh_sentiment["dev"], tmp_path / "dev.jsonl", 48)
    test = _slice(zh_sentiment["test"], tmp_path / "test.jsonl", 48)
    wf = load(WORKFLOWS / "chinese.yaml", [
        f"storage={tmp_path / 'store'}", f"tracking_uri={sqlite_tracking(tmp_path)}",
        f"prepare.input=[{corpus}]", f"prepare.vocab={zh_vocab}", "prepare.dupe_factor=1",
        "prepare.max_seq_length=64",
        "pretrain.max_steps=4", "pretrain.batch_size=16", "pretrain.warmup_steps=1",
        "pretrain.eval_every=0", "pretrain.eval_samples=32", "pretrain.checkpoint_every=4",
        "pretrain.max_seq_length=64", "pretrain.log_every=2",
        f"finetune.0.train={train}", f"finetune.0.validation={dev}", "finetune.0.epochs=1",
        "finetune.0.max_seq_length=64", "finetune.0.batch_size=16",
        "finetune.0.num_workers=0",   # Ray Train's local mode: no worker start-up
        "finetune.0.seeds=1",         # the scratch baseline stays, one seed per side
        f"evaluate.0.input={test}"])
    assert wf.prepare["word_segmenter"] == "jieba" and wf.prepare["do_whole_word_mask"]
    summary = run(wf)
    stages = {s["stage"]: s for s in summary["stages"]}
    print({name: s.get("seconds") for name, s in stages.items()})
    assert list(stages) == ["prepare", "pretrain-phase1", "finetune-0-classification",
                            "evaluate-0"]
    assert all(s["status"] == "ran" for s in stages.values())

    # prepare: the bert-base-chinese vocab, jieba whole-word groups in the shards
    out = stages["prepare"]["output"]
    manifest = json.loads(open(f"{out}/manifest.json").read())
    assert manifest["vocab"]["size"] == 21128
    assert manifest["config"]["word_segmenter"] == "jieba"
    assert open(f"{out}/vocab.txt", "rb").read() == zh_vocab.read_bytes()   # U+2028 kept
    table = pq.read_table([f"{out}/{s['file']}" for s in manifest["shards"]])
    positions = table.column("masked_lm_positions").to_pylist()
    runs = sum(int(np.sum(np.diff(p) == 1)) for p in positions)
    assert runs > 0.25 * sum(map(len, positions))     # masks come in words, not characters
    c = manifest["counts"]
    assert 0.27 < c["masked_tokens"] / c["tokens"] < 0.33   # the recipe's 30%

    pretrained = stages["pretrain-phase1"]["metrics"]
    assert pretrained["step"] == 4 and pretrained["loss"] > 0
    metrics = stages["evaluate-0"]["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
