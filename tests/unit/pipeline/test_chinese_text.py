"""Chinese text through the pipeline's text stage: the bert-base-chinese vocab (U+2028 line),
token ids equal to `BertTokenizerFast` on real Chinese text, the sentence splitter's
Chinese terminators and quotes, and a WordPiece vocab trained on Chinese."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from model.hf import read_vocab
from pipeline.schema import SPECIAL_TOKENS
from pipeline.text import normalize, split_sentences
from pipeline.tokenizer import VocabInfo, build_tokenizer, encode_sentences, load_vocab, train_vocab

MIXED = [
    "我买了iPhone 12，价格是￥5,999元（约合$900）。",
    "ＢＥＲＴ模型在２０１８年发布，Google的论文《BERT: Pre-training》很有名！",
    "他说：“我们明天去北京吧？”她回答：「好的。」",
    "２００米跑了２３．５秒；ＷＴＯ的全称是World Trade Organization……",
    "Ｅ－ｍａｉｌ：ｔｅｓｔ＠ｅｘａｍｐｌｅ．ｃｏｍ，电话０１０－１２３４５６７８",
    "中文English混合123文本abc，还有emoji😀和生僻字𠀀。",
    "Café Über naïve 東京 한국어 ﹏﹏ 【注意】〈重要〉『引用』",
    "第1章 第２节 Ⅲ型 ①②③ ５０％ 3.14159 1,000,000",
]


@pytest.fixture(scope="module")
def vocab(zh_vocab):
    return load_vocab(zh_vocab)


@pytest.fixture(scope="module")
def hf_tokenizer(zh_vocab, tmp_path_factory):
    from transformers import BertTokenizerFast
    folder = tmp_path_factory.mktemp("hf-zh")
    shutil.copy(zh_vocab, folder / "vocab.txt")
    return BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)


@pytest.fixture(scope="module")
def articles(peoples_daily_jsonl):
    with open(peoples_daily_jsonl, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def reviews(zh_sentiment):
    with open(zh_sentiment["test"], encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


# --- the vocab -----------------------------------------------------------------------------

def test_the_bert_base_chinese_vocab_loads_all_21128_tokens_u2028_included(zh_vocab, vocab):
    assert len(vocab) == 21128 and len(set(vocab)) == 21128
    assert vocab[343] == "\u2028" and vocab[13502] == "##\u2028"   # lines 344 and 13503
    assert vocab[:1] == ["[PAD]"] and vocab[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert read_vocab(zh_vocab) == vocab                     # the model side reads it the same
    info = VocabInfo.from_vocab(vocab)
    assert info.size == 21128 and info.is_subword[13502] and not info.is_subword[343]


def test_the_vocab_ids_are_the_ones_transformers_reads(vocab, hf_tokenizer):
    # transformers 5 (like Google's load_vocab) strips each line, which turns lines 344 and
    # 13503 into "" and "##"; no text ever encodes to either, so the ids agree regardless.
    # Ours keeps the lines as they are, so the vocab.txt we write back is the same file.
    assert len(hf_tokenizer) == len(vocab)
    hf_tokens = hf_tokenizer.convert_ids_to_tokens(list(range(len(vocab))))
    assert [t.strip() for t in hf_tokens] == [t.strip() for t in vocab]


# --- parity with BertTokenizerFast -----------------------------------------------------------

def _assert_same_ids(ours, hf, texts):
    expected = hf(texts, add_special_tokens=False)["input_ids"]
    ids, lengths = encode_sentences(ours, texts)
    assert lengths.tolist() == [len(e) for e in expected]
    got = np.split(ids, np.cumsum(lengths)[:-1]) if len(texts) else []
    for text, g, e in zip(texts, got, expected, strict=True):
        assert g.tolist() == e, text


@pytest.mark.slow
def test_ids_equal_bert_tokenizer_fast_on_peoples_daily(vocab, hf_tokenizer, articles):
    sentences = [s for a in articles[:1500] for s in split_sentences(a)]
    assert len(sentences) > 15000
    _assert_same_ids(build_tokenizer(vocab, True), hf_tokenizer, sentences)
    # raw articles too: newlines between paragraphs, full-width digits and letters, ——
    _assert_same_ids(build_tokenizer(vocab, True), hf_tokenizer, articles[1500:1800])


def test_ids_equal_bert_tokenizer_fast_on_reviews(vocab, hf_tokenizer, reviews):
    # user text: half-width punctuation, Latin words, digits, URLs, emoji
    assert len(reviews) == 2000
    _assert_same_ids(build_tokenizer(vocab, True), hf_tokenizer, reviews)
    _assert_same_ids(build_tokenizer(vocab, True), hf_tokenizer, [normalize(r) for r in reviews])


def test_ids_equal_bert_tokenizer_fast_on_mixed_scripts_and_full_width_punctuation(
        vocab, hf_tokenizer):
    _assert_same_ids(build_tokenizer(vocab, True), hf_tokenizer, MIXED)


def test_each_cjk_character_is_its_own_token_and_latin_words_are_wordpieces(vocab):
    tok = build_tokenizer(vocab, True)
    tokens = tok.encode("我爱自然语言处理，BERT模型。", add_special_tokens=False).tokens
    assert tokens[:8] == list("我爱自然语言处理") and tokens[8] == "，"
    assert tokens[-3:] == ["模", "型", "。"]
    assert "".join(t.lstrip("#") for t in tokens[9:-3]) == "bert"   # lower-cased pieces
    # Extension B (U+20000) is a CJK character to BERT too: split off, unknown to this vocab
    assert tok.encode("a𠀀b", add_special_tokens=False).tokens == ["a", "[UNK]", "b"]


# --- sentence splitting ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("今天天气很好。我们去公园吧！你去吗？", ["今天天气很好。", "我们去公园吧！", "你去吗？"]),
    ("第一条；第二条；第三条", ["第一条；", "第二条；", "第三条"]),
    ("他犹豫了……最后还是走了。", ["他犹豫了……", "最后还是走了。"]),
    ("他说：“我们走吧。”然后就走了。", ["他说：“我们走吧。”", "然后就走了。"]),
    ("她问：‘真的吗？’我点点头。", ["她问：‘真的吗？’", "我点点头。"]),
    ("「行きます！」『はい。』それで", ["「行きます！」", "『はい。』", "それで"]),
    ("增长１２．５％，达到３．２亿元。下一句", ["增长１２．５％，达到３．２亿元。", "下一句"]),
    ("真的吗?太好了!谢谢", ["真的吗?", "太好了!", "谢谢"]),
    ("我用Python写代码。It works. 很好", ["我用Python写代码。", "It works.", "很好"]),
    ("The price is 3.5 元. 便宜", ["The price is 3.5 元.", "便宜"]),
])
def test_the_splitter_ends_chinese_sentences_at_terminators_and_closing_quotes(text, expected):
    assert split_sentences(text) == expected


def test_an_ellipsis_inside_latin_text_and_decimals_do_not_split():
    assert split_sentences("Wait…what is 3．5 or 1.5") == ["Wait…what is 3．5 or 1.5"]


def test_splitting_peoples_daily_keeps_all_text_and_starts_no_sentence_with_a_closer(articles):
    closers = tuple("。！？；…”’」』）")
    sentences = []
    for a in articles[:1000]:
        parts = split_sentences(a)
        assert "".join(parts).replace(" ", "") == normalize(a).replace(" ", "")
        sentences += parts
    # (’ also opens abbreviated years in this corpus: ’９７中国旅游年)
    assert not [s for s in sentences if s.startswith(tuple("。！？；”」』"))]
    # news prose: ≈ 30-60 characters a sentence once 。！？； split it
    mean = sum(map(len, sentences)) / len(sentences)
    assert 20 < mean < 70, mean
    assert sum(s.endswith(closers) for s in sentences) / len(sentences) > 0.85


# --- a WordPiece vocab trained on Chinese --------------------------------------------------------

def test_a_wordpiece_vocab_trained_on_chinese_covers_the_characters(articles):
    # 600 articles hold ≈ 3,400 distinct CJK characters; the English default of 1,000 alphabet
    # characters would leave a quarter of Chinese text [UNK]
    trained = train_vocab(articles[:600], 6000, True)
    # (fewer than 6,000: a small Chinese corpus runs out of merges seen twice)
    assert tuple(trained[:5]) == SPECIAL_TOKENS and len(set(trained)) == len(trained) <= 6000
    cjk = [t for t in trained if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    assert len(cjk) > 3000               # characters are words to BERT: each its own token
    assert not [t for t in trained if len(t) > 1 and any("\u4e00" <= c <= "\u9fff" for c in t)
                and not t.startswith("##")]  # never a multi-character CJK token
    tok = build_tokenizer(trained, True)
    ids, _ = encode_sentences(tok, [s for a in articles[600:800] for s in split_sentences(a)])
    assert np.mean(ids == trained.index("[UNK]")) < 0.02       # unseen articles
    assert load_vocab("\n".join(trained) + "\n") == trained
