"""Fine-tuning metrics with their standard definitions, as pure numpy functions.

- Classification: accuracy, F1 (binary: of the positive class; macro: the unweighted mean
  over classes), Matthews correlation (multi-class: Gorodkin's R_K, what scikit-learn
  computes). Regression: Pearson and Spearman (ties get their average rank).
- Token classification: entity-level precision/recall/F1 with seqeval's default
  (conlleval-compatible) chunking: an I- after O or after another type starts an entity,
  entities never cross sentences, micro-averaged over all entities.
- SQuAD: the official scripts' answer normalization (lower case, no punctuation, no
  articles, single spaces), exact match and token-overlap F1 (max over gold answers), and
  v2.0's best "no answer" threshold.
Every value is a fraction in [0, 1] (SQuAD's official script prints 100x these). A metric
with nothing to measure (no predicted entity, a constant input to a correlation) is 0.0,
as scikit-learn and seqeval report it with zero_division=0.
Never imports torch or Ray, never reads files.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


# ------------------------------------------------------------------ classification

def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if gold.size else 0.0


def confusion(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts; rows gold, columns predicted."""
    m = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(m, (np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return m


def f1_per_class(pred, gold, num_labels: int) -> np.ndarray:
    m = confusion(pred, gold, num_labels)
    tp = np.diag(m).astype(np.float64)
    predicted, actual = m.sum(0), m.sum(1)  # per class: column sums, row sums
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    return np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)


def binary_f1(pred, gold, positive: int = 1) -> float:
    """F1 of class `positive` (GLUE's F1 for MRPC and QQP)."""
    n = int(max(np.max(pred, initial=0), np.max(gold, initial=0), positive)) + 1
    return float(f1_per_class(pred, gold, n)[positive])


def macro_f1(pred, gold, num_labels: int) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in gold or pred."""
    m = confusion(pred, gold, num_labels)
    present = (m.sum(0) + m.sum(1)) > 0
    f1 = f1_per_class(pred, gold, num_labels)
    return float(f1[present].mean()) if present.any() else 0.0


def matthews_corrcoef(pred, gold, num_labels: int) -> float:
    """Matthews correlation; for K classes Gorodkin's R_K (equal to MCC when K = 2)."""
    m = confusion(pred, gold, num_labels).astype(np.float64)
    n = m.sum()
    correct = np.trace(m)
    p, t = m.sum(0), m.sum(1)  # predicted and true counts per class
    cov_pt = correct * n - p @ t
    cov_pp = n * n - p @ p
    cov_tt = n * n - t @ t
    den = np.sqrt(cov_pp * cov_tt)
    return float(cov_pt / den) if den > 0 else 0.0


# ------------------------------------------------------------------ regression

def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc @ xc) * (yc @ yc))
    return float(xc @ yc / den) if den > 0 else 0.0


def average_ranks(x) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # group boundaries of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size, dtype=np.float64)
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0  # mean of ranks s+1..e
    return ranks


def spearman(x, y) -> float:
    return pearson(average_ranks(x), average_ranks(y))


# ------------------------------------------------------------------ entities (seqeval)

def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_') as seqeval reads them."""
    return tag[0], (tag[1:].split("-", 1)[-1] or "_")


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) of each entity in one tag sequence (IOB1/IOB2/IOBES alike)."""
    out = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, t in enumerate(list(tags) + ["O"]):  # the sentinel closes a trailing entity
        tag, type_ = _split_tag(t)
        if _chunk_ends(prev_tag, tag, prev_type, type_):
            out.append((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return out


def entity_scores(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict:
    """Micro precision, recall, F1 over entities of all sentences; per-type F1 too."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predicted sentences for {len(gold)} gold ones")
    p_set, g_set = set(), set()
    for s, (p, g) in enumerate(zip(pred, gold)):
        if len(p) != len(g):
            raise ValueError(f"sentence {s}: {len(p)} predicted tags for {len(g)} gold tags")
        p_set.update((s, *e) for e in entities(p))
        g_set.update((s, *e) for e in entities(g))
    correct = len(p_set & g_set)
    precision, recall = _safe_div(correct, len(p_set)), _safe_div(correct, len(g_set))
    out = {"precision": precision, "recall": recall,
           "f1": _safe_div(2 * precision * recall, precision + recall)}
    for type_ in sorted({e[1] for e in g_set}):
        tp = sum(1 for e in p_set & g_set if e[1] == type_)
        pp = _safe_div(tp, sum(1 for e in p_set if e[1] == type_))
        rr = _safe_div(tp, sum(1 for e in g_set if e[1] == type_))
        out[f"f1_{type_}"] = _safe_div(2 * pp * rr, pp + rr)
    return out


# ------------------------------------------------------------------ SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official SQuAD normalization: lower, drop punctuation and articles, fix spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 of normalized answers; an empty answer only matches an empty one."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) against the best-matching gold answer; no gold answers = the
    question is unanswerable (SQuAD 2.0), matched only by the empty prediction."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return (max(exact_match(prediction, g) for g in golds),
            max(token_f1(prediction, g) for g in golds))


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    scores = np.array([squad_scores(p, g) for p, g in zip(predictions, golds)]).reshape(-1, 2)
    out = {"exact_match": float(scores[:, 0].mean()) if len(scores) else 0.0,
           "f1": float(scores[:, 1].mean()) if len(scores) else 0.0}
    has = np.array([any(normalize_answer(g) for g in gs) for gs in golds], dtype=bool)
    if has.size and not has.all():  # SQuAD 2.0: split by answerable / not
        out["has_answer_f1"] = float(scores[has, 1].mean()) if has.any() else 0.0
        out["no_answer_accuracy"] = float(scores[~has, 0].mean())
    return out


def best_null_threshold(null_diff: Sequence[float], answered: Sequence[float],
                        unanswered: Sequence[float]) -> tuple[float, float]:
    """SQuAD 2.0's threshold search (official `find_best_thresh`), for any per-question score.

    null_diff[i]: null score minus best span score (predict "no answer" when it exceeds the
    threshold); answered[i]/unanswered[i]: the question's score when the best span / the
    empty answer is predicted. Returns (best mean score, threshold). Questions with equal
    null_diff switch together, since no threshold can separate them.
    """
    diff = np.asarray(null_diff, dtype=np.float64)
    if diff.size == 0:
        return 0.0, 0.0
    gain = np.asarray(answered, dtype=np.float64) - np.asarray(unanswered, dtype=np.float64)
    order = np.argsort(diff, kind="mergesort")
    base = float(np.sum(unanswered))  # everything predicted "no answer"
    best, thresh = base, float(diff[order[0]]) - 1.0
    cum = base + np.cumsum(gain[order])
    last_of_group = np.r_[diff[order][1:] != diff[order][:-1], True]
    for k in np.flatnonzero(last_of_group):
        if cum[k] > best:
            best, thresh = float(cum[k]), float(diff[order[k]])
    return best / diff.size, thresh
