"""A tiny classification fine-tune shared by the fine-tuning unit tests."""
from __future__ import annotations

import json
import random

import pytest

from tests.helpers import free_port


@pytest.fixture
def tiny_task(tmp_path, wiki_jsonl) -> list[str]:
    """A random bert-tiny over a small word vocab and 64 / 32 topic examples: the arguments
    of a classification fine-tune."""
    import model.hf
    from model import BertConfig, BertForPreTraining
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
        sorted({w for line in wiki_jsonl.read_text().splitlines()[:300]
                for w in json.loads(line)["text"].lower().split() if w.isalpha()})[:2000]
    hf = model.hf.save(BertForPreTraining(BertConfig.from_preset(
        "bert-tiny", vocab_size=len(vocab), max_position_embeddings=64)), tmp_path / "tiny",
        vocab=vocab)
    rows = [json.loads(line) for line in wiki_jsonl.read_text().splitlines()]
    rows = [r for r in rows if r["topic"] != "Uncategorized"]
    random.Random(0).shuffle(rows)
    for name, part in (("train", rows[:64]), ("dev", rows[64:96])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return ["--task", "classification", "--model", str(hf), "--train",
            str(tmp_path / "train.jsonl"), "--validation", str(tmp_path / "dev.jsonl"),
            "--label-column", "topic", "--max-seq-length", "32", "--batch-size", "16",
            "--num-workers", "0", "--tracking-uri", f"http://127.0.0.1:{free_port()}",
            "--storage-path", str(tmp_path / "ray")]
