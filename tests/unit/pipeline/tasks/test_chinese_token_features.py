"""Character-level token classification on Chinese through the fine-tuning features
(`pipeline.tasks.features.encode_words`, `jobs.finetune.tasks.featurize`): each character is
its own token with its own BIO label, on entity tags the test builds from People's Daily."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.assets.zh import entity_tags, peoples_daily_entities
from jobs.finetune.tasks import TaskSpec, featurize
from pipeline.tasks.features import IGNORE, collate, encode_words, task_tokenizer
from pipeline.tokenizer import load_vocab


@pytest.fixture(scope="module")
def vocab(zh_vocab):
    return load_vocab(zh_vocab)


@pytest.fixture(scope="module")
def rows():
    """300 People's Daily paragraphs with entities: characters + a BIO tag per character."""
    return peoples_daily_entities(limit=300)


def test_entity_tags_from_pos_tags_are_bio_per_character():
    pairs = [("江", "nr"), ("泽民", "nr"), ("李", "nr"), ("鹏", "nr"), ("在", "p"),
             ("北京", "ns"), ("会见", "v"), ("新华社", "nt"), ("记者", "n"), ("克林顿", "nr")]
    text, tags = entity_tags(pairs)
    assert text == "江泽民李鹏在北京会见新华社记者克林顿"
    assert tags == ["B-PER", "I-PER", "I-PER", "B-PER", "I-PER", "O", "B-LOC", "I-LOC",
                    "O", "O", "B-ORG", "I-ORG", "I-ORG", "O", "O", "B-PER", "I-PER", "I-PER"]


def test_peoples_daily_entity_rows_have_a_tag_per_character(rows):
    assert len(rows) == 300
    for r in rows:
        assert isinstance(r["tokens"], str) and len(r["tags"]) == len(r["tokens"])
        assert {t[:2] for t in r["tags"]} <= {"O", "B-", "I-"}
    kinds = {t[2:] for r in rows for t in r["tags"] if t != "O"}
    assert kinds == {"PER", "LOC", "ORG"}


def test_each_character_is_one_token_with_its_own_label(rows, vocab, zh_vocab, tmp_path):
    from transformers import BertTokenizerFast
    tok = task_tokenizer(vocab, True)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    index = {t: i for i, t in enumerate(labels)}
    max_len = 128
    words = [r["tokens"] for r in rows]                    # strings: one word per character
    cols, starts = encode_words(tok, words, [[index[t] for t in r["tags"]] for r in rows],
                                max_len)
    (tmp_path / "vocab.txt").write_bytes(zh_vocab.read_bytes())
    hf = BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=True)
    long_rows = 0
    for r, ids, lab, first in zip(rows, cols["input_ids"], cols["labels"], starts,
                                  strict=True):
        n = min(len(r["tokens"]), max_len - 2)
        long_rows += len(r["tokens"]) > max_len - 2
        # character i is token i + 1 ([CLS] first), and nothing else is
        assert first[:n].tolist() == list(range(1, n + 1))
        assert (first[n:] == -1).all() and len(ids) == n + 2
        assert lab[0] == IGNORE and lab[-1] == IGNORE
        assert lab[1:n + 1].tolist() == [index[t] for t in r["tags"][:n]]
        # the ids BertTokenizerFast gives the characters as pre-split words
        expected = hf(list(r["tokens"]), is_split_into_words=True, truncation=True,
                      max_length=max_len)["input_ids"]
        assert ids.tolist() == expected
    assert long_rows > 0                                    # truncation was exercised


def test_featurize_reads_a_string_as_characters_and_collates(rows, vocab):
    spec = TaskSpec(task="token-classification", text_column="tokens", label_column="tags",
                    labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"],
                    max_seq_length=64)
    sample = rows[:16]
    features = featurize(spec, task_tokenizer(vocab, True), vocab, sample, "zh", True)
    batch = collate(features, range(16))
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["input_ids"].shape[1] == min(64, max(len(r["tokens"]) for r in sample) + 2)
    labelled = (batch["labels"] != IGNORE).sum(axis=1)
    assert labelled.tolist() == [min(62, len(r["tokens"])) for r in sample]
    per = features.meta["word_starts"]
    assert all(len(p) == len(r["tokens"]) for p, r in zip(per, sample, strict=True))


def test_a_space_between_characters_gets_no_token_and_no_label(vocab):
    tok = task_tokenizer(vocab, True)
    cols, starts = encode_words(tok, ["北京 上海"], [[3, 4, 0, 3, 4]], 32)
    assert starts[0].tolist() == [1, 2, -1, 3, 4]
    assert cols["labels"][0].tolist() == [IGNORE, 3, 4, 3, 4, IGNORE]
    assert np.array_equal(cols["input_ids"][0][1:5],
                          [vocab.index(c) for c in "北京上海"])
