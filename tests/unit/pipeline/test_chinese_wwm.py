"""Chinese whole-word masking (pipeline/segment.py): jieba words are masking groups, the ids
stay BertTokenizerFast's, and the masks keep Google's statistics on People's Daily."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import PrepareConfig
from pipeline.errors import InputError
from pipeline.instances import create_block_instances_flat
from pipeline.segment import encode_with_word_starts, load_segmenter, word_ids
from pipeline.text import split_sentences
from pipeline.tokenizer import VocabInfo, build_tokenizer, encode_sentences, load_vocab

jieba = pytest.importorskip("jieba")


def two_character_words(text: str) -> list[str]:
    """A stand-in segmenter for `--word-segmenter MODULE:FUNCTION`: 2-character words."""
    return [text[i:i + 2] for i in range(0, len(text), 2)]


@pytest.fixture(scope="module")
def vocab(zh_vocab):
    return load_vocab(zh_vocab)


@pytest.fixture(scope="module")
def info(vocab):
    return VocabInfo.from_vocab(vocab)


@pytest.fixture(scope="module")
def corpus(peoples_daily_jsonl):
    """The first 1,100 People's Daily articles as sentences, and sentences per article."""
    with open(peoples_daily_jsonl, encoding="utf-8") as f:
        docs = [split_sentences(json.loads(line)["text"]) for line in f][:1100]
    return [s for d in docs for s in d], np.array([len(d) for d in docs])


@pytest.fixture(scope="module")
def encoded(corpus, vocab, info):
    sentences, _ = corpus
    tok = build_tokenizer(vocab, True)
    return encode_with_word_starts(tok, sentences, info.is_subword, load_segmenter("jieba"))


@pytest.fixture(scope="module")
def expected(corpus, zh_vocab, tmp_path_factory):
    """Independently of pipeline/segment.py: BertTokenizerFast's ids and character offsets,
    jieba's word spans of each sentence on its own (`jieba.tokenize`), and from them per
    token: (ids, jieba word index over the corpus, CJK flag, expected word start)."""
    import shutil

    from transformers import BertTokenizerFast
    folder = tmp_path_factory.mktemp("hf-zh")
    shutil.copy(zh_vocab, folder / "vocab.txt")
    hf = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    sentences, _ = corpus
    enc = hf(sentences, add_special_tokens=False, return_offsets_mapping=True)
    piece = np.array([t.startswith("##") for t in hf.convert_ids_to_tokens(range(len(hf)))])
    ids, word, cjk, start = [], [], [], []
    base = 0
    for s, token_ids, offsets in zip(sentences, enc["input_ids"], enc["offset_mapping"],
                                     strict=True):
        spans = [(a, b) for _, a, b in jieba.tokenize(s, HMM=False)]
        word_of_char = np.repeat(np.arange(len(spans)), [b - a for a, b in spans]) + base
        base += len(spans)
        first = np.array([a for a, _ in offsets], dtype=np.int64)
        w = word_of_char[first]
        c = np.array([("\u4e00" <= s[a] <= "\u9fff") or ("\u3400" <= s[a] <= "\u4dbf")
                      for a in first], dtype=bool)
        cont = np.where(c, np.concatenate([[False], w[1:] == w[:-1]]), piece[token_ids])
        cont[:1] = False                               # a sentence starts a group
        ids += token_ids
        word.append(w)
        cjk.append(c)
        start.append(~cont)
    return dict(ids=np.array(ids), word=np.concatenate(word), cjk=np.concatenate(cjk),
                starts=np.concatenate(start).astype(np.uint8))


@pytest.mark.slow
def test_word_starts_are_jiebas_words_and_ids_are_unchanged(corpus, encoded, expected, vocab,
                                                           info):
    sentences, _ = corpus
    ids, lengths, starts = encoded
    plain_ids, plain_lengths = encode_sentences(build_tokenizer(vocab, True), sentences)
    assert (ids == plain_ids).all() and (lengths == plain_lengths).all()
    assert (ids == expected["ids"]).all()
    assert starts.dtype == np.uint8 and len(starts) == len(ids)
    body = ~np.isin(ids, info.special_ids)        # [UNK]: never masked, its flag is moot
    assert (starts[body] == expected["starts"][body]).all()
    # most characters continue a word: multi-character jieba words are the groups
    assert (starts == 0).mean() > 0.3


@pytest.fixture(scope="module")
def position_corpus(corpus, encoded, expected, info):
    """The encoded corpus with every token replaced by its position (+5): after masking, an
    instance's original ids say exactly where each token came from. Real special tokens
    ([UNK]) stay special."""
    _, per_doc = corpus
    ids, lengths, starts = encoded
    special_at = np.flatnonzero(np.isin(ids, info.special_ids))
    pos_info = VocabInfo(size=len(ids) + 5, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4,
                         special_ids=np.concatenate([np.arange(5), special_at + 5]).astype(np.int32),
                         is_subword=np.zeros(len(ids) + 5, bool),
                         random_ids=np.setdiff1d(np.arange(5, len(ids) + 5), special_at + 5)
                         .astype(np.int32))
    return dict(ids=np.arange(5, len(ids) + 5, dtype=np.int32), lengths=lengths,
                per_doc=per_doc, starts=starts, info=pos_info, word=expected["word"],
                cjk=expected["cjk"], special=np.isin(ids, info.special_ids))


def _instances(c, whole_word: bool):
    cfg = PrepareConfig(max_seq_length=48, dupe_factor=1, do_whole_word_mask=whole_word)
    return create_block_instances_flat(c["ids"], c["lengths"], c["per_doc"], cfg, c["info"],
                                       12345, 0, c["starts"] if whole_word else None)


def _masks(table):
    inputs = table.column("input_ids").combine_chunks()
    flat = inputs.values.to_numpy().astype(np.int64)
    row_start = inputs.offsets.to_numpy()[:-1]
    pos_col = table.column("masked_lm_positions").combine_chunks()
    per_row = np.diff(pos_col.offsets.to_numpy())
    where = np.repeat(row_start, per_row) + pos_col.values.to_numpy().astype(np.int64)
    original = table.column("masked_lm_ids").combine_chunks().values.to_numpy().astype(np.int64)
    restored = flat.copy()
    restored[where] = original
    chosen = np.zeros(len(flat), bool)
    chosen[where] = True
    return flat, restored, chosen, where, original, per_row


@pytest.mark.slow
def test_a_jieba_word_is_masked_whole_or_not_at_all_and_googles_shares_hold(position_corpus):
    c = position_corpus
    table = _instances(c, whole_word=True)
    assert table.num_rows >= 10_000, table.num_rows
    flat, restored, chosen, where, original, per_row = _masks(table)
    src = restored - 5                                   # corpus position per token
    body = src >= 0                                      # not [CLS]/[SEP]
    at = np.where(body, src, 0)
    word, cjk, special = c["word"][at], c["cjk"][at], c["special"][at]
    # adjacent tokens of one instance from consecutive positions of one jieba word, the
    # second a CJK character (neither [UNK]): one group, chosen together or not at all
    same = body[:-1] & body[1:] & (src[1:] == src[:-1] + 1) & ~special[:-1] & ~special[1:]
    same &= (word[1:] == word[:-1]) & cjk[1:]
    assert same.sum() > 100_000
    assert (chosen[1:][same] == chosen[:-1][same]).all()
    # and words are the only groups: a CJK character after another word's token is chosen
    # on its own (the pair is split in a good share of the cases)
    other = body[:-1] & body[1:] & (src[1:] == src[:-1] + 1) & ~special[:-1] & ~special[1:]
    other &= (word[1:] != word[:-1]) & cjk[1:] & cjk[:-1]
    assert (chosen[1:][other] != chosen[:-1][other]).mean() > 0.5 * (chosen[1:][other]
                                                                     | chosen[:-1][other]).mean()
    # multi-character words are chosen (not only single characters)
    assert (chosen[1:][same] & chosen[:-1][same]).sum() > 0.1 * chosen.sum()

    num_tokens = table.column("num_tokens").to_numpy().astype(np.int64)
    budget = np.minimum(20, np.maximum(1, np.rint(num_tokens * 0.15)))
    assert (per_row <= budget).all()
    # Google's rule: round(15%) per instance (7 of 48 = 14.6%); words that would overflow
    # are skipped and single characters fill the rest, so the budget is nearly always met
    assert per_row.sum() / budget.sum() > 0.99
    rate = per_row.sum() / num_tokens.sum()
    plain = _instances(position_corpus, whole_word=False)
    plain_rate = _masks(plain)[5].sum() / plain.column("num_tokens").to_numpy().sum()
    assert 0.145 < rate < 0.16 and abs(rate - plain_rate) < 0.002, (rate, plain_rate)
    now = flat[where]
    is_mask, kept = now == 4, now == original
    assert abs(is_mask.mean() - 0.8) < 0.015
    assert abs(kept.mean() - 0.1) < 0.015
    assert abs((~is_mask & ~kept).mean() - 0.1) < 0.015


# --- the segmenter option ---------------------------------------------------------------------

def test_word_ids_align_words_that_drop_characters():
    assert word_ids("ab cd", ["ab", " ", "cd"]).tolist() == [0, 0, 1, 2, 2]
    ids = word_ids("ab cd", ["ab", "cd"])                # the space is its own word
    assert ids[[0, 1, 3, 4]].tolist() == [0, 0, 1, 1] and ids[2] < 0


def test_a_module_function_segmenter_defines_the_groups(vocab, info):
    seg = load_segmenter(f"{__name__}:two_character_words")
    assert seg is two_character_words
    tok = build_tokenizer(vocab, True)
    ids, lengths, starts = encode_with_word_starts(tok, ["我们明天去北京", "今天ok好"],
                                                   info.is_subword, seg)
    # "\n".join: 我们|明天|去北|京\n|今天|ok|好 -> sentence 2 starts a group regardless
    assert lengths.tolist() == [7, 4]
    assert starts.tolist() == [1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1]


@pytest.mark.parametrize("cfg, message", [
    (dict(word_segmenter="jieba"), "add --do-whole-word-mask"),
    (dict(word_segmenter="nosuchmodule:cut", do_whole_word_mask=True), "cannot import"),
    (dict(word_segmenter="json:nosuchfunction", do_whole_word_mask=True), "no function"),
    (dict(word_segmenter="thulac", do_whole_word_mask=True), "expected jieba or MODULE"),
])
def test_a_bad_segmenter_is_one_line_naming_it(cfg, message):
    with pytest.raises(InputError, match=message) as e:
        PrepareConfig(input=["x"], output="y", vocab="v", **cfg).validate()
    assert "\n" not in str(e.value)
