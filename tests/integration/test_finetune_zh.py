"""Character-level Chinese token classification through the real `bertpipe finetune` and
`bertpipe evaluate`: BIO tags per character, the tokens column a plain string (each
character one token), predictions one per character.

The model is the shared MiniLM fixture (English vocab): the templates use only CJK
characters its vocab holds, so every character is a real token. Runs in Ray Train's local
mode (`--num-workers 0`), like the other task tests.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers import job

evaluate, finetune = job("evaluate"), job("finetune")

pytestmark = [pytest.mark.slow, pytest.mark.beside, pytest.mark.timeout(600)]

PERSONS = ["李明", "王文", "張光", "陳志", "楊春", "劉英", "高美", "林秀", "金正", "宮本"]
PLACES = ["北京", "東京", "南京", "上海", "福岡", "石川", "長野", "神戸", "香川", "山口"]
ORGS = ["新華社", "日本学会", "天文社", "東方会社", "中国国会", "青年会"]
TEMPLATES = ["{P}和{P}的{L}", "{O}的{P}見{L}", "{L}的{O}和{P}", "年{P}行{L}", "{P}見{O}的人"]


def rows(rng: random.Random, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        text, tags = "", []
        template = rng.choice(TEMPLATES)
        i = 0
        while i < len(template):
            if template[i] == "{":
                slot = template[i + 1]
                value = rng.choice({"P": PERSONS, "L": PLACES, "O": ORGS}[slot])
                kind = {"P": "PER", "L": "LOC", "O": "ORG"}[slot]
                text += value
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(value) - 1)
                i += 3
            else:
                text += template[i]
                tags.append("O")
                i += 1
        out.append({"tokens": text, "tags": tags})
    return out


def test_chinese_bio_per_character_fine_tunes_and_evaluates(tmp_path, capsys, minilm_dir,
                                                           sqlite_tracking):
    vocab = set((minilm_dir / "vocab.txt").read_text(encoding="utf-8").split("\n"))
    assert all(c in vocab for c in "".join(PERSONS + PLACES + ORGS + TEMPLATES) if c not in "{}PLO")
    rng = random.Random(3)

    def write(name, data):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data),
                        encoding="utf-8")
        return str(path)
    train, dev_rows = write("train.jsonl", rows(rng, 240)), rows(rng, 60)
    dev = write("dev.jsonl", dev_rows)
    tracking = sqlite_tracking(tmp_path)
    code = finetune(["--task", "token-classification", "--model", str(minilm_dir),
                     "--train", train, "--validation", dev, "--epochs", "2",
                     "--batch-size", "16", "--learning-rate", "1e-4", "--num-workers", "0",
                     "--max-seq-length", "32", "--log-every", "10",
                     "--output", str(tmp_path / "ner"), "--tracking-uri", tracking])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["metric"] == "f1"
    assert summary["metrics"]["dev_f1"] > 0.7, summary["metrics"]      # entity level
    spec = json.loads((tmp_path / "ner" / "bertpipe_task.json").read_text())
    assert set(spec["labels"]) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    code = evaluate(["--model", str(tmp_path / "ner"), "--input", dev,
                     "--predictions", str(tmp_path / "pred.jsonl"), "--tracking-uri", tracking])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["metrics"]["f1"] == pytest.approx(summary["metrics"]["dev_f1"])
    predictions = [json.loads(x) for x in Path(tmp_path / "pred.jsonl").read_text(
        encoding="utf-8").splitlines()]
    for p, r in zip(predictions, dev_rows, strict=True):
        assert p["tokens"] == list(r["tokens"])                 # one prediction a character
        assert len(p["prediction"]) == len(r["tags"])
