"""Featurizing task data with the real bert-base-uncased vocab: pairs, first-piece labels,
SQuAD windows and answers, multiple choice; labels and columns the model does not know."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.finetune.config import FinetuneConfig
from jobs.finetune.tasks import featurize, fit_to_training_rows, spec_from_config
from pipeline.errors import InputError
from pipeline.tasks.features import (
    IGNORE,
    collate,
    encode_pairs,
    encode_words,
    label_ids,
    label_list,
    task_tokenizer,
)
from pipeline.tasks.squad import context_mask, decode, encode_squad, windows
from pipeline.tokenizer import load_vocab


@pytest.fixture(scope="module")
def vocab(bert_vocab):
    return load_vocab(str(bert_vocab))


@pytest.fixture(scope="module")
def tok(vocab):
    return task_tokenizer(vocab, do_lower_case=True)


def _tokens(vocab, ids):
    return [vocab[i] for i in ids]


def test_a_pair_is_cls_a_sep_b_sep_with_segment_ids(tok, vocab):
    cols = encode_pairs(tok, ["The cat sat."], ["It was happy."], max_len=32)
    assert _tokens(vocab, cols["input_ids"][0]) == [
        "[CLS]", "the", "cat", "sat", ".", "[SEP]", "it", "was", "happy", ".", "[SEP]"]
    assert cols["token_type_ids"][0].tolist() == [0] * 6 + [1] * 5
    assert cols["attention_mask"][0].sum() == 11


def test_truncation_cuts_the_longer_side_first_and_keeps_the_separators(tok, vocab):
    cols = encode_pairs(tok, ["one two three four five six seven"], ["yes"], max_len=8)
    assert _tokens(vocab, cols["input_ids"][0]) == [
        "[CLS]", "one", "two", "three", "four", "[SEP]", "yes", "[SEP]"]


def test_a_word_label_goes_on_its_first_piece_only(tok, vocab):
    cols, starts = encode_words(tok, [["Johanson", "lives", "here"]], [[1, 0, 0]], max_len=16)
    pieces = _tokens(vocab, cols["input_ids"][0])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert len(pieces) > 5  # "johanson" is more than one WordPiece
    first = starts[0].tolist()
    assert pieces[first[1]] == "lives"
    labels = cols["labels"][0]
    assert labels[first[0]] == 1 and labels[first[1]] == 0 and labels[first[2]] == 0
    assert (labels == IGNORE).sum() == len(pieces) - 3  # specials and continuation pieces


def test_words_cut_off_by_max_len_have_no_first_piece(tok):
    _, starts = encode_words(tok, [["a", "b", "c", "d", "e"]], [[0] * 5], max_len=4)
    assert starts[0].tolist() == [1, 2, -1, -1, -1]


def test_collate_pads_to_the_longest_and_token_labels_with_ignore(tok):
    cols, _ = encode_words(tok, [["a"], ["a", "b", "c"]], [[1], [1, 0, 1]], max_len=16)
    from pipeline.tasks.features import Features
    batch = collate(Features(cols, np.arange(2), 2), [0, 1])
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    assert batch["labels"][0].tolist() == [IGNORE, 1, IGNORE, IGNORE, IGNORE]


def test_labels_are_the_same_whatever_their_spelling_and_sort_numerically():
    assert label_list([2, "10", 1.0, " 2"]) == ["1", "2", "10"]
    assert label_ids(["10", 1, 2.0], ["1", "2", "10"], "x").tolist() == [2, 0, 1]


def test_an_unknown_label_is_one_error_naming_it():
    with pytest.raises(InputError, match=r"dev.jsonl: record 2 has the unknown label 'maybe'"):
        label_ids(["yes", "maybe"], ["no", "yes"], "dev.jsonl")


def test_classification_spec_learns_labels_or_regression_from_the_training_rows():
    cfg = FinetuneConfig(task="classification")
    spec = fit_to_training_rows(spec_from_config(cfg), cfg,
                                [{"text": "x", "label": "b"}, {"text": "y", "label": "a"}])
    assert spec.labels == ["a", "b"] and not spec.regression and spec.metric == "accuracy"
    sts = fit_to_training_rows(spec_from_config(cfg), cfg,
                               [{"text": "x", "label": 3.8}, {"text": "y", "label": 1}])
    assert sts.regression and sts.labels is None and sts.metric == "pearson"


def test_featurize_names_the_file_of_an_unknown_dev_label(tok, vocab):
    cfg = FinetuneConfig(task="classification", text_column="s", label_column="y")
    spec = fit_to_training_rows(spec_from_config(cfg), cfg, [{"s": "a", "y": 0}, {"s": "b", "y": 1}])
    with pytest.raises(InputError, match="dev.csv: record 1 has the unknown label '7'"):
        featurize(spec, tok, vocab, [{"s": "c", "y": 7}], "dev.csv", training=False)


def test_multiple_choice_gives_one_pair_per_ending(tok, vocab):
    cfg = FinetuneConfig(task="multiple-choice", text_pair_column="sent2")
    rows = [{"sent1": "Tom has a red ball.", "sent2": "The ball is", "ending0": "red.",
             "ending1": "blue.", "ending2": "very green indeed.", "label": 0}]
    spec = fit_to_training_rows(spec_from_config(cfg), cfg, rows)
    assert spec.choice_columns == ["ending0", "ending1", "ending2"]
    f = featurize(spec, tok, vocab, rows, "train", training=True)
    ids = f.columns["input_ids"][0]
    assert ids.shape[0] == 3  # (choices, tokens)
    second = _tokens(vocab, ids[1][f.columns["attention_mask"][0][1] == 1])
    assert second[-5:] == ["ball", "is", "blue", ".", "[SEP]"]
    assert f.columns["labels"] == [0]


# ------------------------------------------------------------------ SQuAD

def test_windows_start_doc_stride_apart_and_cover_the_context():
    assert windows(10, room=4, stride=3) == [(0, 4), (3, 7), (6, 10)]
    assert windows(3, room=4, stride=3) == [(0, 3)]


def _squad_row(context, answer, start=None, qid="q"):
    start = context.index(answer) if start is None else start
    return {"id": qid, "question": "Where was Ann born?", "context": context,
            "answers": [{"text": answer, "answer_start": start}], "is_impossible": False}


def _cls_sep(vocab):
    return vocab.index("[CLS]"), vocab.index("[SEP]")


def test_the_answer_span_of_each_window_maps_back_to_the_answer_text(tok, vocab):
    filler = " ".join(f"word{i}" for i in range(40))
    context = f"{filler} Ann was born in Reykjavík in 1990. {filler}"
    row = _squad_row(context, "Reykjavík")
    f = encode_squad(tok, [row], max_len=32, doc_stride=8, max_query_length=16, training=True,
                     cls_id=_cls_sep(vocab)[0], sep_id=_cls_sep(vocab)[1])
    assert len(f) > 3  # a long context becomes several windows
    found = 0
    for i in range(len(f)):
        s, e = f.columns["start_positions"][i], f.columns["end_positions"][i]
        if s == 0:
            assert e == 0  # the answer is not (wholly) in this window: [CLS]
            continue
        found += 1
        off = f.meta["offsets"][i]
        assert context[off[s, 0]:off[e, 1]] == "Reykjavík"  # original casing and accent
        assert f.columns["token_type_ids"][i][s] == 1
    assert found >= 1


def test_an_unanswerable_question_targets_cls_in_every_window(tok, vocab):
    row = {"id": "x", "question": "Who?", "context": "Nobody is named here at all.",
           "answers": [], "is_impossible": True}
    f = encode_squad(tok, [row], 64, 128, 32, True, *_cls_sep(vocab))
    assert f.columns["start_positions"] == [0] and f.columns["end_positions"] == [0]


def test_training_skips_a_question_whose_answer_is_not_in_the_context(tok, vocab):
    row = _squad_row("Ann was born in Oslo.", "Bergen", start=0)
    assert len(encode_squad(tok, [row], 64, 128, 32, True, *_cls_sep(vocab))) == 0
    assert len(encode_squad(tok, [row], 64, 128, 32, False, *_cls_sep(vocab))) == 1


def test_decode_keeps_the_best_window_and_the_lowest_null_score(tok, vocab):
    filler = " ".join(f"word{i}" for i in range(30))
    context = f"Ann was born in Oslo. {filler} Bob was born in Rome."
    row = _squad_row(context, "Oslo")
    f = encode_squad(tok, [row], 32, 10, 16, False, *_cls_sep(vocab))
    n = len(f)
    # window 0 holds "Oslo"; make it the best span there, and score every other window lower
    first = [i for i in range(n) if f.columns["start_positions"][i] == 0]
    start = np.array([f.columns["start_positions"][i] or 1 for i in range(n)])
    oslo = [i for i in range(n) if i not in first][0]
    score = np.where(np.arange(n) == oslo, 5.0, 1.0)
    null = np.linspace(3.0, 2.0, n)
    mask = context_mask(f, range(n), 32)
    assert mask[oslo, start[oslo]] and not mask[oslo, 0]
    texts, diff = decode(f, [row], start, start, score, null)
    assert texts == ["Oslo"]
    assert diff[0] == pytest.approx(2.0 - 5.0)
