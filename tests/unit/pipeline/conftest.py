"""Fixtures shared by the pipeline tests: real Wikipedia text tokenized once, and the
instances Google's procedure (jobs/bench/google.py) makes from it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.bench import google
from pipeline.text import split_sentences
from pipeline.tokenizer import VocabInfo, build_tokenizer, encode_sentences, load_vocab


@pytest.fixture(scope="session")
def wiki_corpus(wiki_jsonl, bert_vocab):
    """All 10,033 lead sections, split and tokenized with the real bert-base-uncased vocab,
    grouped 20 consecutive sections to a document (501 documents of ≈ 2,000 tokens):
    (vocab, flat ids, sentence lengths, sentences per document)."""
    vocab = load_vocab(bert_vocab)
    with open(wiki_jsonl, encoding="utf-8") as f:
        split = [split_sentences(json.loads(line)["text"]) for line in f]
    group = 20
    split = split[:len(split) // group * group]
    ids, lengths = encode_sentences(build_tokenizer(vocab, True), [s for d in split for s in d])
    per_section = np.array([len(d) for d in split])
    per_doc = per_section.reshape(-1, group).sum(axis=1)
    return vocab, ids, lengths, per_doc


def google_documents(ids, lengths, per_doc) -> list[list[list[int]]]:
    """The flat corpus as Google's nested documents (empty sentences dropped)."""
    sentences = np.split(ids, np.cumsum(lengths)[:-1])
    kept = [s.tolist() for s in sentences if len(s)]
    doc_ends = np.cumsum([int((lengths[a:b] > 0).sum()) for a, b in
                          zip(np.cumsum(per_doc) - per_doc, np.cumsum(per_doc))])
    return [kept[a:b] for a, b in zip(np.concatenate([[0], doc_ends[:-1]]), doc_ends)]


def google_specials(vocab: list[str]) -> google.Specials:
    info = VocabInfo.from_vocab(vocab)
    return google.Specials(info.cls_id, info.sep_id, info.mask_id, range(len(vocab)),
                           frozenset(np.flatnonzero(info.is_subword).tolist()))


@pytest.fixture(scope="session")
def google_wiki(wiki_corpus):
    """Statistics of Google's instances of the Wikipedia corpus (its defaults, dupe factor
    2, masked): see `google_stats`."""
    vocab, ids, lengths, per_doc = wiki_corpus
    specials = google_specials(vocab)
    instances = google.create_training_instances(google_documents(ids, lengths, per_doc),
                                                 specials, dupe_factor=2)
    return google_stats(instances, specials.mask_id)


def google_stats(instances: list[google.Instance], mask_id: int) -> dict:
    """The statistics the tests compare: per instance length, NotNext, predictions, and the
    shares of [MASK] / kept / random among the predictions."""
    n = np.array([len(i.tokens) for i in instances])
    preds = np.array([len(i.masked_lm_positions) for i in instances])
    now = np.array([i.tokens[p] for i in instances for p in i.masked_lm_positions])
    label = np.array([x for i in instances for x in i.masked_lm_labels])
    return {"num_tokens": n, "is_random": np.array([i.is_random_next for i in instances]),
            "preds": preds, "mask": (now == mask_id).mean(), "kept": (now == label).mean(),
            "random": ((now != mask_id) & (now != label)).mean()}
