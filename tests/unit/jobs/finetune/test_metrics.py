"""jobs.metrics against hand-computed cases (and scikit-learn / scipy where installed)."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.finetune import metrics as M


def test_accuracy_and_binary_f1_match_hand_counts():
    gold = [1, 1, 1, 0, 0, 0, 1, 0]
    pred = [1, 0, 1, 0, 1, 0, 1, 1]
    # positive class 1: tp 3, fp 2, fn 1 -> P 3/5, R 3/4, F1 = 2PR/(P+R) = 2/3
    assert M.accuracy(pred, gold) == pytest.approx(5 / 8)
    assert M.binary_f1(pred, gold) == pytest.approx(2 / 3)
    assert M.binary_f1(pred, gold, positive=0) == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))


def test_macro_f1_averages_classes_unweighted_and_skips_absent_ones():
    gold = [0, 0, 0, 0, 1, 2]
    pred = [0, 0, 0, 0, 2, 2]
    # class 0: F1 1; class 1: never predicted, F1 0; class 2: P 1/2 R 1 -> 2/3; class 3 absent
    assert M.macro_f1(pred, gold, num_labels=4) == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_matthews_correlation_is_the_phi_coefficient_for_two_classes():
    gold = [1, 1, 1, 0, 0, 0, 1, 0]
    pred = [1, 0, 1, 0, 1, 0, 1, 1]
    tp, tn, fp, fn = 3, 2, 2, 1
    phi = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.matthews_corrcoef(pred, gold, 2) == pytest.approx(phi)
    assert M.matthews_corrcoef(gold, gold, 2) == pytest.approx(1.0)
    assert M.matthews_corrcoef([0] * 8, gold, 2) == 0.0  # a constant prediction: no correlation


def test_multiclass_scores_agree_with_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, 5, 300))
    assert M.matthews_corrcoef(pred, gold, 5) == pytest.approx(sk.matthews_corrcoef(gold, pred))
    assert M.macro_f1(pred, gold, 5) == pytest.approx(sk.f1_score(gold, pred, average="macro"))
    assert M.binary_f1(pred % 2, gold % 2) == pytest.approx(sk.f1_score(gold % 2, pred % 2))


def test_pearson_and_spearman_with_ties():
    x = [1, 2, 3, 4, 5]
    assert M.pearson(x, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert M.pearson(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # monotone but not linear: Spearman 1, Pearson below 1
    assert M.spearman(x, [1, 8, 27, 64, 125]) == pytest.approx(1.0)
    assert M.pearson(x, [1, 8, 27, 64, 125]) < 0.99
    # ties share their average rank: [10, 20, 20, 30] -> ranks [1, 2.5, 2.5, 4]
    assert M.average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert M.pearson([1, 1, 1], [1, 2, 3]) == 0.0  # constant input


def test_correlations_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 200).astype(float)  # many ties
    y = x + rng.normal(0, 2, 200)
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


# ------------------------------------------------------------------ entities (seqeval)

def test_entities_are_typed_spans_in_bio():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O"]
    assert M.entities(tags) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5)]


def test_an_i_tag_after_o_or_another_type_starts_an_entity_as_in_seqeval():
    assert M.entities(["O", "I-PER", "I-PER"]) == [("PER", 1, 2)]
    assert M.entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    assert M.entities(["I-MISC"]) == [("MISC", 0, 0)]


def test_an_entity_at_the_end_of_a_sentence_is_closed():
    assert M.entities(["O", "B-ORG", "I-ORG"]) == [("ORG", 1, 2)]


def test_entity_f1_counts_only_exact_spans_of_the_right_type():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-MISC", "O"]]
    # gold: PER(0-1), LOC(3), ORG; pred: PER(0), LOC(3), MISC -> 1 correct of 3 and 3
    s = M.entity_scores(pred, gold)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(1 / 3)
    assert s["f1_LOC"] == 1.0 and s["f1_PER"] == 0.0


def test_entities_never_cross_sentences():
    # an I- at the start of sentence 2 is its own entity, not a continuation of sentence 1's
    gold = [["O", "B-PER"], ["I-PER", "O"]]
    assert M.entity_scores(gold, gold)["f1"] == 1.0
    assert M.entity_scores([["O", "B-PER"], ["O", "O"]], gold)["recall"] == pytest.approx(0.5)


def test_no_predicted_entities_scores_zero_not_an_error():
    s = M.entity_scores([["O", "O"]], [["B-PER", "O"]])
    assert s == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "f1_PER": 0.0}


# ------------------------------------------------------------------ SQuAD

def test_squad_normalization_drops_case_punctuation_articles_and_extra_spaces():
    assert M.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert M.normalize_answer("an apple, a pear") == "apple pear"
    assert M.normalize_answer("theory") == "theory"  # articles only as whole words
    assert M.exact_match("the Beatles.", "Beatles") == 1.0


def test_squad_f1_is_bag_of_tokens_overlap():
    # pred "denver broncos team" vs gold "the denver broncos": common 2, P 2/3, R 2/2 -> 0.8
    assert M.token_f1("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert M.token_f1("x b b", "b b c") == pytest.approx(2 / 3)  # counts, not sets
    assert M.token_f1("Paris", "London") == 0.0


def test_squad_scores_take_the_best_gold_answer():
    em, f1 = M.squad_scores("Denver Broncos", ["Broncos", "Denver Broncos", "the Broncos"])
    assert (em, f1) == (1.0, 1.0)


def test_unanswerable_questions_only_match_the_empty_answer():
    assert M.squad_scores("", []) == (1.0, 1.0)
    assert M.squad_scores("something", []) == (0.0, 0.0)
    assert M.squad_scores("", ["Paris"]) == (0.0, 0.0)
    m = M.squad_metrics(["Paris", "", "x"], [["Paris"], [], []])
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert m["has_answer_f1"] == 1.0 and m["no_answer_accuracy"] == 0.5


def test_best_null_threshold_maximizes_the_mean_score():
    # questions 0, 1 answerable (right span scores 1); 2, 3 unanswerable
    null_diff = [-2.0, 1.0, 1.5, 3.0]
    answered = [1.0, 1.0, 0.0, 0.0]
    unanswered = [0.0, 0.0, 1.0, 1.0]
    score, thresh = M.best_null_threshold(null_diff, answered, unanswered)
    # answering those with diff <= 1.0 (0 and 1), not 2 and 3: all four right
    assert (score, thresh) == (1.0, 1.0)
    # a threshold below every diff answers nothing: the unanswerable half is right
    assert M.best_null_threshold([1.0, 2.0], [0.0, 0.0], [1.0, 0.0]) == (0.5, 0.0)


def test_best_null_threshold_moves_questions_with_equal_diffs_together():
    score, thresh = M.best_null_threshold([1.0, 1.0], [1.0, 0.0], [0.0, 1.0])
    assert score == pytest.approx(0.5)  # either both answered or neither: 1 of 2 right
