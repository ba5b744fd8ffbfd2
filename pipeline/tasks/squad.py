"""SQuAD features and answers: question + context windows in, answer text out.

Encoding follows BERT's `run_squad.py`: the question is cut to `max_query_length` tokens; a
context longer than the room left (max_seq_length - question - 3) is split into windows
whose starts are `doc_stride` tokens apart, each `[CLS] question [SEP] window [SEP]`. A
window's target is the answer's first and last WordPiece when the whole answer lies in it,
else (0, 0), the `[CLS]` position that also marks SQuAD 2.0's unanswerable questions.

Decoding takes each window's best valid span (from `model.best_spans`: start <= end, at most
max_answer_length long, inside the context) and, per question, keeps the best-scoring window.
Its text is cut from the original context by character offsets, so casing, accents and
spacing are the passage's own. The "no answer" score is the lowest `[CLS]` score over the
question's windows (as in run_squad); `null_diff` = null score - best span score, and the
answer is empty when it exceeds the threshold chosen on dev.
Pure numpy and `tokenizers`: never imports torch, Ray or MLflow, never reads files.
"""
from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from pipeline.errors import InputError
from pipeline.tasks.features import Features

OUTSIDE = -1  # offset of a token that is not part of the context (question, specials)


def answer_char_span(row: dict) -> tuple[int, int] | None:
    """[start, end) of the first answer in the context; None when unanswerable or when the
    answer text is not found (a bad record, skipped in training as in run_squad)."""
    if row["is_impossible"] or not row["answers"]:
        return None
    ans = row["answers"][0]
    text, start = str(ans["text"]), int(ans.get("answer_start", -1))
    context = row["context"]
    if not text.strip():
        return None
    if context[start:start + len(text)] != text:
        start = context.find(text)  # some records' offsets are off by a few characters
        if start < 0:
            return None
    return start, start + len(text)


def windows(n_tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges covering a context of n_tokens, `stride` apart."""
    out, start = [], 0
    while True:
        end = min(n_tokens, start + room)
        out.append((start, end))
        if end >= n_tokens:
            return out
        start += min(stride, end - start)


def encode_squad(tok: Tokenizer, rows: list[dict], max_len: int, doc_stride: int,
                 max_query_length: int, training: bool, cls_id: int, sep_id: int) -> Features:
    """Features of every window; `training` drops questions whose answer cannot be found.

    meta["offsets"][f]: (T, 2) character span of each token of feature f in its context,
    (-1, -1) for question and special tokens."""
    if max_len <= max_query_length + 3:
        raise InputError(f"max_seq_length {max_len} leaves no room for the context after a "
                         f"{max_query_length}-token question; raise it or lower max_query_length")
    questions = tok.encode_batch([r["question"] for r in rows], add_special_tokens=False)
    contexts = tok.encode_batch([r["context"] for r in rows], add_special_tokens=False)
    cols: dict[str, list] = {k: [] for k in ("input_ids", "token_type_ids", "attention_mask",
                                             "start_positions", "end_positions")}
    offsets, example_index = [], []
    for ex, (row, q, c) in enumerate(zip(rows, questions, contexts)):
        span = answer_char_span(row)
        if training and span is None and not row["is_impossible"]:
            continue  # an answer we cannot locate teaches nothing right
        q_ids = q.ids[:max_query_length]
        c_ids = np.asarray(c.ids, dtype=np.int32)
        c_off = np.asarray(c.offsets, dtype=np.int64).reshape(-1, 2)
        room = max_len - len(q_ids) - 3
        if span is not None and len(c_ids):
            # first token ending after the answer starts; last token starting before it ends
            a_first = int(np.searchsorted(c_off[:, 1], span[0], side="right"))
            a_last = int(np.searchsorted(c_off[:, 0], span[1], side="left")) - 1
        for w_start, w_end in windows(len(c_ids), room, doc_stride):
            head = [cls_id, *q_ids, sep_id]
            ids = np.concatenate([np.asarray(head, dtype=np.int32), c_ids[w_start:w_end],
                                  np.asarray([sep_id], dtype=np.int32)])
            types = np.zeros(len(ids), dtype=np.int8)
            types[len(head):] = 1
            off = np.full((len(ids), 2), OUTSIDE, dtype=np.int64)
            off[len(head):len(head) + w_end - w_start] = c_off[w_start:w_end]
            start = end = 0
            if span is not None and len(c_ids) and w_start <= a_first and a_last < w_end \
                    and a_first <= a_last:
                start, end = a_first - w_start + len(head), a_last - w_start + len(head)
            cols["input_ids"].append(ids)
            cols["token_type_ids"].append(types)
            cols["attention_mask"].append(np.ones(len(ids), dtype=np.int8))
            cols["start_positions"].append(start)
            cols["end_positions"].append(end)
            offsets.append(off)
            example_index.append(ex)
    return Features(cols, np.asarray(example_index, dtype=np.int64), len(rows),
                    {"offsets": offsets})


def context_mask(features: Features, idx, width: int) -> np.ndarray:
    """(B, width) bool: True on context tokens, where an answer may start or end."""
    out = np.zeros((len(idx), width), dtype=bool)
    for b, i in enumerate(idx):
        inside = features.meta["offsets"][i][:, 0] != OUTSIDE
        out[b, :len(inside)] = inside
    return out


def decode(features: Features, rows: list[dict], start: np.ndarray, end: np.ndarray,
           score: np.ndarray, null: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per question: the best window's span text and null_diff (null - span score).

    start, end, score, null: (F,) per feature, from `model.best_spans`."""
    best = np.full(features.num_examples, -np.inf)
    null_min = np.full(features.num_examples, np.inf)
    texts = [""] * features.num_examples
    for f, ex in enumerate(features.example_index):
        null_min[ex] = min(null_min[ex], float(null[f]))
        if float(score[f]) > best[ex]:
            off = features.meta["offsets"][f]
            s, e = int(start[f]), int(end[f])
            if off[s, 0] == OUTSIDE or off[e, 0] == OUTSIDE:
                continue  # no context token in this window
            best[ex] = float(score[f])
            texts[ex] = rows[ex]["context"][off[s, 0]:off[e, 1]]
    diff = np.where(np.isfinite(best), null_min - best, np.inf)  # no span at all: no answer
    return texts, diff
