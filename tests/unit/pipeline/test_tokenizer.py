"""Vocab loading and training, the WordPiece tokenizer, and its parity with BertTokenizerFast."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.schema import SPECIAL_TOKENS
from pipeline.text import split_sentences
from pipeline.tokenizer import (
    AsciiPath,
    VocabInfo,
    build_tokenizer,
    encode_sentences,
    load_vocab,
    train_vocab,
)


@pytest.fixture(scope="module")
def wiki_texts(wiki_jsonl):
    with open(wiki_jsonl, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def wiki_sentences(wiki_texts):
    return [s for t in wiki_texts[:3000] for s in split_sentences(t)]


@pytest.fixture(scope="module")
def vocab(bert_vocab):
    return load_vocab(bert_vocab)


def _hf_tokenizer(bert_vocab, tmp_path_factory, do_lower_case):
    """BertTokenizerFast loaded from a folder holding only the vocab.txt."""
    import shutil

    from transformers import BertTokenizerFast
    folder = tmp_path_factory.mktemp("hf_vocab")
    shutil.copy(bert_vocab, folder / "vocab.txt")
    return BertTokenizerFast.from_pretrained(str(folder), do_lower_case=do_lower_case)


# --- load_vocab --------------------------------------------------------------------------

def test_load_vocab_reads_the_real_bert_vocab(bert_vocab):
    tokens = load_vocab(bert_vocab)
    assert len(tokens) == 30522
    assert tokens[0] == "[PAD]" and tokens[100] == "[UNK]" and tokens[101] == "[CLS]"
    assert tokens[102] == "[SEP]" and tokens[103] == "[MASK]"


def test_load_vocab_accepts_already_read_text_and_crlf():
    text = "\r\n".join(SPECIAL_TOKENS + ("hello", "##s")) + "\r\n"
    assert load_vocab(text) == list(SPECIAL_TOKENS) + ["hello", "##s"]


def test_load_vocab_names_text_read_elsewhere_in_its_errors():
    with pytest.raises(InputError, match=r"^vocab s3://b/vocab\.txt: empty"):
        load_vocab("", name="s3://b/vocab.txt")
    with pytest.raises(InputError, match=r"^vocab s3://b/vocab\.txt: missing special"):
        load_vocab("[PAD]", name="s3://b/vocab.txt")


def test_load_vocab_reads_s3(s3_server, bert_vocab):
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="vocabs")
    s3.upload_file(str(bert_vocab), "vocabs", "bert/vocab.txt")
    assert load_vocab("s3://vocabs/bert/vocab.txt") == load_vocab(bert_vocab)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncat\ndog\ncat\n".encode(),
     "token 'cat' appears twice (lines 6 and 8)"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\ncat\n".encode(), "missing special token(s) [MASK]"),
    ("[PAD]\n[UNK]\n\n[CLS]\n[SEP]\n[MASK]\n".encode(), "line 3 is empty"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncaf\xe9\n", "not UTF-8"),
])
def test_load_vocab_rejects_a_bad_file_in_one_line_naming_it(tmp_path, content, problem):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        load_vocab(path)
    message = str(e.value)
    assert message.startswith(f"vocab {path}: ") and problem in message
    assert "\n" not in message


def test_load_vocab_rejects_a_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"vocab .*nope\.txt: cannot read it"):
        load_vocab(tmp_path / "nope.txt")


# --- build_tokenizer: parity with transformers -------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("do_lower_case", [True, False])
def test_token_ids_equal_bert_tokenizer_fast_on_wikipedia(vocab, bert_vocab, wiki_sentences,
                                                          wiki_texts, tmp_path_factory,
                                                          do_lower_case):
    hf = _hf_tokenizer(bert_vocab, tmp_path_factory, do_lower_case)
    ours = build_tokenizer(vocab, do_lower_case)
    expected = hf(wiki_sentences, add_special_tokens=False)["input_ids"]
    for ascii_path in (None, AsciiPath.build(vocab, do_lower_case)):   # both give HF's ids
        ids, lengths = encode_sentences(ours, wiki_sentences, ascii_path)
        assert lengths.tolist() == [len(e) for e in expected]
        assert ids.tolist() == [i for e in expected for i in e]
    # raw, unnormalized documents too (newlines, odd spaces): the normalizer is the same
    raw = wiki_texts[3000:3500]
    assert [e.ids for e in ours.encode_batch(raw, add_special_tokens=False)] == \
        hf(raw, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_token_ids_equal_bert_tokenizer_fast_on_accents_cjk_and_control_text(
        vocab, bert_vocab, tmp_path_factory, do_lower_case):
    hf = _hf_tokenizer(bert_vocab, tmp_path_factory, do_lower_case)
    ours = build_tokenizer(vocab, do_lower_case)
    texts = ["\u00dcn\u00efc\u00f6d\u00e9 \u00df \ufb01 caf\u00e9 na\u00efve Cafe\u0301",
             "東京は日本の首都。中文字符 한국어",
             "tab\there\u200bzwsp\u00adsoft\x00nul",
             "x" * 150, "\u0130stanbul \u03a3\u0391\u03a3 \u01c5", "\ufffd replaced",
             "emoji \U0001f44d\U0001f3fd and \U0001f1e9\U0001f1ea", "don't stop-me now!!"]
    assert [e.ids for e in ours.encode_batch(texts, add_special_tokens=False)] == \
        hf(texts, add_special_tokens=False)["input_ids"]


def test_literal_special_token_text_is_split_not_matched(vocab):
    # A document that contains the text "[SEP]" must not inject a real separator (Google's
    # tokenizer splits it the same way; BertTokenizerFast would match it as special).
    ids = build_tokenizer(vocab, True).encode("a [SEP] b [MASK]", add_special_tokens=False).ids
    assert vocab.index("[SEP]") not in ids and vocab.index("[MASK]") not in ids
    assert [vocab[i] for i in ids] == ["a", "[", "sep", "]", "b", "[", "mask", "]"]


def test_uncased_tokenizer_lowercases_and_strips_accents_cased_keeps_them(vocab):
    uncased = build_tokenizer(vocab, True).encode("Caf\u00e9", add_special_tokens=False)
    assert uncased.tokens == ["cafe"]
    cased = build_tokenizer(vocab, False).encode("Caf\u00e9", add_special_tokens=False)
    assert cased.tokens != ["cafe"]


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_the_ascii_path_gives_the_full_tokenizers_ids(vocab, do_lower_case):
    sentences = ["Hello, World! (It's) 3.14 -- x_y [SEP] a/b\\c {d} `e` ~f^ |g|",
                 "  spaced   out  ", "", "UPPER lower MiXeD", "x" * 120 + " tail",
                 "Café is not ASCII", "tab\there", "émigré", "$5 @home #tag 100% a&b *c+d=e",
                 "semi;colon:quote\"end? <tag> ok.", "ÆØÅ and 北京", "[MASK] [UNK]"]
    ours = build_tokenizer(vocab, do_lower_case)
    fast = AsciiPath.build(vocab, do_lower_case)
    a_ids, a_len = encode_sentences(ours, sentences)
    b_ids, b_len = encode_sentences(ours, sentences, fast)
    assert a_len.tolist() == b_len.tolist() and a_ids.tolist() == b_ids.tolist()


def test_tokenizer_survives_pickling_for_ray_workers(vocab):
    tok = build_tokenizer(vocab, True)
    again = pickle.loads(pickle.dumps(tok))
    text = "Pickled tokenizers encode the same."
    assert again.encode(text).ids == tok.encode(text).ids


# --- encode_sentences --------------------------------------------------------------------

def test_encode_sentences_returns_flat_int32_ids_and_lengths_keeping_empty_ones(vocab):
    tok = build_tokenizer(vocab, True)
    ids, lengths = encode_sentences(tok, ["Hello world.", "", "\u200b", "Bye."])
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    assert lengths.tolist() == [3, 0, 0, 2]
    assert [vocab[i] for i in ids] == ["hello", "world", ".", "bye", "."]
    ids, lengths = encode_sentences(tok, [])
    assert len(ids) == 0 and len(lengths) == 0


# --- train_vocab -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(wiki_texts):
    return train_vocab(wiki_texts[:1500], 2000, True)


def test_train_vocab_puts_special_tokens_first_and_respects_the_size(trained):
    assert tuple(trained[:5]) == SPECIAL_TOKENS
    assert len(trained) == 2000 and len(set(trained)) == 2000
    assert any(t.startswith("##") for t in trained)


@pytest.mark.slow
def test_train_vocab_is_deterministic(wiki_texts, trained):
    # tokenizers alone differs run to run (continuation ids in Rust HashMap order, ties in
    # merges, huggingface/tokenizers#1794); each call here gets fresh hash seeds.
    for _ in range(3):
        assert train_vocab(wiki_texts[:1500], 2000, True) == trained


def test_trained_vocab_loads_and_tokenizes_the_corpus_with_few_unknowns(trained, wiki_texts,
                                                                       tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(trained) + "\n", encoding="utf-8")
    assert load_vocab(path) == trained
    ids, _ = encode_sentences(build_tokenizer(trained, True), wiki_texts[:1500])
    assert np.mean(ids == trained.index("[UNK]")) < 0.005


# --- VocabInfo ---------------------------------------------------------------------------

def test_vocab_info_knows_special_subword_and_random_ids(vocab):
    info = VocabInfo.from_vocab(vocab)
    assert info.size == 30522
    assert (info.pad_id, info.unk_id, info.cls_id, info.sep_id, info.mask_id) == \
        (0, 100, 101, 102, 103)
    assert sorted(info.special_ids.tolist()) == [0, 100, 101, 102, 103]
    assert info.is_subword[vocab.index("##s")] and not info.is_subword[vocab.index("the")]
    random_tokens = {vocab[i] for i in info.random_ids}
    assert not random_tokens & set(SPECIAL_TOKENS)
    assert "[unused0]" not in random_tokens and "the" in random_tokens
    assert len(info.random_ids) == 30522 - 5 - 994  # bert-base-uncased has 994 [unusedN]
