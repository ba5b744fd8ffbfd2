"""Fine-tuning features: texts in, unpadded token id arrays out; batches padded on demand.

- `task_tokenizer`: the WordPiece of `pipeline.tokenizer` plus BERT's templates
  (`[CLS] A [SEP]`, `[CLS] A [SEP] B [SEP]` with segment ids 0/1), truncating the longer
  side first.
- `encode_pairs` (sequence classification), `encode_words` (token classification: a
  label on each word's first WordPiece only, -100 elsewhere), `encode_choices` (multiple
  choice: one pair per ending). SQuAD windows live in `pipeline.tasks.squad`.
- `Features`: per-feature arrays (`columns`, the model's inputs and targets) plus what
  decoding needs (`example_index`, `meta`); `collate` pads a batch to its longest row.
- Labels: `label_key` makes 1, "1" and 1.0 the same label; `label_list` orders them.
Pure numpy and `tokenizers`: never imports torch, Ray or MLflow, never reads files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from pipeline.errors import InputError
from pipeline.tokenizer import build_tokenizer

IGNORE = -100  # label of positions no loss is computed on (HF's ignore_index)
PAD_VALUES = {"labels": IGNORE}  # padding of a per-token label array; every other column: 0


def task_tokenizer(vocab: list[str], do_lower_case: bool) -> Tokenizer:
    """WordPiece with BERT's single and pair templates (segment ids 0 for A, 1 for B)."""
    tok = build_tokenizer(vocab, do_lower_case)
    index = {t: i for i, t in enumerate(vocab)}
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", index["[CLS]"]), ("[SEP]", index["[SEP]"])])
    return tok


@dataclass
class Features:
    """One split's features, unpadded: `columns[name][i]` is feature i's array or scalar."""
    columns: dict[str, list]
    """input_ids, token_type_ids, attention_mask and the targets (labels, start/end_positions)"""
    example_index: np.ndarray
    """(F,) the example each feature comes from (a long SQuAD context gives several)"""
    num_examples: int
    meta: dict[str, list] = field(default_factory=dict)
    """per-feature decoding aids (QA character offsets, token-classification word starts)"""

    def __len__(self) -> int:
        return len(self.example_index)

    def take(self, idx) -> Features:
        idx = [int(i) for i in idx]
        return Features({k: [v[i] for i in idx] for k, v in self.columns.items()},
                        self.example_index[idx], self.num_examples,
                        {k: [v[i] for i in idx] for k, v in self.meta.items()})

    def num_tokens(self) -> int:
        return int(sum(np.asarray(a).size for a in self.columns["input_ids"]))


def collate(features: Features, idx, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Features `idx` as arrays: (B,) for scalars; (B, T) or (B, C, T) padded to the longest."""
    out = {}
    for name, col in features.columns.items():
        if names is not None and name not in names:
            continue
        items = [col[i] for i in idx]
        if np.ndim(items[0]) == 0:
            out[name] = np.asarray(items)
            continue
        longest = max(np.shape(a)[-1] for a in items)
        pad = PAD_VALUES.get(name, 0)
        out[name] = np.stack([np.pad(np.asarray(a), [(0, 0)] * (np.ndim(a) - 1)
                                     + [(0, longest - np.shape(a)[-1])], constant_values=pad)
                              for a in items])
    return out


def _arrays(encodings) -> dict[str, list[np.ndarray]]:
    return {"input_ids": [np.asarray(e.ids, dtype=np.int32) for e in encodings],
            "token_type_ids": [np.asarray(e.type_ids, dtype=np.int8) for e in encodings],
            "attention_mask": [np.ones(len(e.ids), dtype=np.int8) for e in encodings]}


def encode_pairs(tok: Tokenizer, texts: list[str], pairs: list[str] | None,
                 max_len: int) -> dict[str, list[np.ndarray]]:
    """`[CLS] text [SEP] (pair [SEP])` per example, at most max_len tokens (longest side cut)."""
    tok.enable_truncation(max_len, strategy="longest_first")
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    try:
        return _arrays(tok.encode_batch(inputs))
    finally:
        tok.no_truncation()


def encode_words(tok: Tokenizer, words: list[list[str]], word_labels: list[list[int]] | None,
                 max_len: int) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Pre-split words -> WordPieces; each word's label on its first piece, -100 elsewhere.

    A sentence given as a string is split into characters: character-level tagging (Chinese
    BIO per character), each character one token.

    Returns the columns (with `labels` when word_labels is given) and, per sentence, the
    position of each word's first piece (-1 for words cut off by max_len or that encode to
    nothing), so token predictions map back to words."""
    tok.enable_truncation(max_len)
    try:
        encodings = tok.encode_batch([list(map(str, w)) for w in words], is_pretokenized=True)
    finally:
        tok.no_truncation()
    cols = _arrays(encodings)
    starts, labels = [], []
    for s, e in enumerate(encodings):
        first = np.full(len(words[s]), -1, dtype=np.int32)
        prev = None
        for pos, w in enumerate(e.word_ids):
            if w is not None and w != prev:
                first[w] = pos
            prev = w
        starts.append(first)
        if word_labels is not None:
            lab = np.full(len(e.ids), IGNORE, dtype=np.int64)
            kept = first >= 0
            lab[first[kept]] = np.asarray(word_labels[s], dtype=np.int64)[kept]
            labels.append(lab)
    if word_labels is not None:
        cols["labels"] = labels
    return cols, starts


def encode_choices(tok: Tokenizer, contexts: list[str], endings: list[list[str]],
                   max_len: int) -> dict[str, list[np.ndarray]]:
    """One `[CLS] context [SEP] ending [SEP]` per choice: (C, T) arrays per example, the
    choices padded to the example's longest (attention_mask 0 on the padding)."""
    flat = encode_pairs(tok, [c for c, ends in zip(contexts, endings) for _ in ends],
                        [e for ends in endings for e in ends], max_len)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in flat}
    i = 0
    for ends in endings:
        n = len(ends)
        for k, arrays in flat.items():
            group = arrays[i:i + n]
            longest = max(len(a) for a in group)
            cols[k].append(np.stack([np.pad(a, (0, longest - len(a))) for a in group]))
        i += n
    return cols


# ------------------------------------------------------------------ labels

def label_key(value) -> str:
    """The label a value stands for: 1, "1", 1.0 and " 1 " are all "1"."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _int_like(key: str) -> bool:
    try:
        int(key)
        return True
    except ValueError:
        return False


def label_list(values) -> list[str]:
    """The distinct labels of a training set: numerically ordered when all are integers."""
    keys = sorted({label_key(v) for v in values})
    if keys and all(map(_int_like, keys)):
        keys.sort(key=int)
    return keys


def label_ids(values, labels: list[str], where: str) -> np.ndarray:
    """Class ids of `values`; a label the model does not know is one error naming it."""
    index = {k: i for i, k in enumerate(labels)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        k = label_key(v)
        if k not in index:
            shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
            raise InputError(f"{where}: record {i + 1} has the unknown label {k!r} "
                             f"(known labels: {shown})")
        out[i] = index[k]
    return out


def is_fractional(values) -> bool:
    """True when the labels are numbers and at least one is not an integer (regression)."""
    seen_fraction = False
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return False
        if isinstance(v, bool):
            return False
        seen_fraction |= not f.is_integer()
    return seen_fraction
