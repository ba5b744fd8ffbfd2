"""Google's `create_pretraining_data.py`, rewritten in plain Python: the reference procedure.

The benchmark (`bertpipe bench prepare`) runs it on the same text as `prepare` and prints the
ratio; the tests compare `prepare`'s statistics with it. It follows the original step by
step with one `random.Random(seed)`, drawing in the same order: read documents (one sentence
per line, a blank line between documents), shuffle the documents, then per pass
(`dupe_factor`) and per document build NSP pairs (`create_instances_from_document`),
truncate them (`truncate_seq_pair`), mask them (`create_masked_lm_predictions`), and shuffle
all instances. Tokens are whatever the caller's tokenizer returns (ids here); whole-word
masking groups a token with the "##" continuations after it, as the original does.

Tokenization is a function the caller passes: `FullTokenizer` below is the original's
pure-Python tokenizer (BERT's basic tokenizer, then greedy longest-match WordPiece), one
line at a time; the bench also runs the procedure with the Rust WordPiece `prepare` uses,
batch-encoded, which is Google's cost with tokenization made as cheap as ours. Nothing is
written (the original serializes TFRecords), in the reference's favour. Never imports
numpy: this is the baseline to beat.
"""
from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

# CJK Unified Ideographs blocks: each such character is a word of its own
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True       # all non-letter, non-digit ASCII counts, "$" and "^" included
    return unicodedata.category(ch).startswith("P")


class FullTokenizer:
    """BERT's original tokenizer in plain Python: clean the text (controls out, whitespace
    to spaces), space out CJK characters, split on whitespace, lower-case and strip accents,
    split off punctuation, then WordPiece each word greedily (longest vocab match first,
    "##" for continuations, [UNK] for a word it cannot cover or one over `max_chars`)."""

    def __init__(self, vocab: list[str], do_lower_case: bool = True, max_chars: int = 100):
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.unk = self.ids["[UNK]"]
        self.do_lower_case, self.max_chars = do_lower_case, max_chars

    def _words(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif any(a <= cp <= b for a, b in _CJK):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        words = []
        for token in "".join(chars).split():
            if self.do_lower_case:
                token = "".join(c for c in unicodedata.normalize("NFD", token.lower())
                                if unicodedata.category(c) != "Mn")
            current = ""
            for ch in token:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str, out: list[int]) -> None:
        if len(word) > self.max_chars:
            out.append(self.unk)
            return
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            else:
                out.append(self.unk)   # no piece matches: the whole word is unknown
                return
            start = end
        out.extend(pieces)

    def tokenize(self, text: str) -> list[int]:
        """The token ids of one text (no [CLS]/[SEP])."""
        out: list[int] = []
        for word in self._words(text):
            self._wordpiece(word, out)
        return out

    def tokenize_lines(self, lines: list[str]) -> list[list[int]]:
        return [self.tokenize(line) for line in lines]


@dataclass
class Instance:
    """One training instance, as the original's TrainingInstance (ids instead of strings)."""
    tokens: list[int]
    segment_ids: list[int]
    is_random_next: bool
    masked_lm_positions: list[int]
    masked_lm_labels: list[int]


@dataclass(frozen=True)
class Specials:
    """The ids the procedure treats specially, and the words random replacements come from."""
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_words: Sequence[int]
    """Ids a masked token may be replaced with (the original: the whole vocab)"""
    subword: frozenset = frozenset()
    """Ids of "##" continuations (whole-word masking)"""


def read_documents(lines: Iterable[str], tokenize: Callable[[list[str]], list[list[int]]],
                   batch_lines: int = 4096) -> list[list[list[int]]]:
    """Documents (lists of tokenized sentences) of Google's input format.

    `tokenize` maps a list of lines to their token ids; lines are handed over in batches
    (the original tokenizes one line at a time). Blank lines end documents; lines that
    tokenize to nothing are dropped; empty documents are removed.
    """
    documents: list[list[list[int]]] = [[]]
    pending: list[str] = []

    def flush():
        for tokens in tokenize(pending):
            if tokens:
                documents[-1].append(tokens)
        pending.clear()

    for line in lines:
        line = line.strip()
        if not line:
            flush()
            documents.append([])
            continue
        pending.append(line)
        if len(pending) >= batch_lines:
            flush()
    flush()
    return [d for d in documents if d]


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int,
                      rng: random.Random) -> None:
    """Drop tokens, one at a time from the longer side (B on ties), from a random end."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


def create_masked_lm_predictions(tokens: list[int], masked_lm_prob: float,
                                 max_predictions_per_seq: int, specials: Specials,
                                 rng: random.Random, do_whole_word_mask: bool = False):
    """(output tokens, positions ascending, labels): 15% of the tokens, 80/10/10."""
    cand_indexes: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token == specials.cls_id or token == specials.sep_id:
            continue
        if do_whole_word_mask and cand_indexes and token in specials.subword:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    rng.shuffle(cand_indexes)
    output = list(tokens)
    num_to_predict = min(max_predictions_per_seq,
                         max(1, int(round(len(tokens) * masked_lm_prob))))
    masked: list[tuple[int, int]] = []
    covered: set[int] = set()
    for index_set in cand_indexes:
        if len(masked) >= num_to_predict:
            break
        if len(masked) + len(index_set) > num_to_predict:
            continue
        if any(i in covered for i in index_set):
            continue
        for i in index_set:
            covered.add(i)
            if rng.random() < 0.8:
                replacement = specials.mask_id
            elif rng.random() < 0.5:
                replacement = tokens[i]
            else:
                replacement = specials.vocab_words[rng.randint(0, len(specials.vocab_words) - 1)]
            output[i] = replacement
            masked.append((i, tokens[i]))
    masked.sort()
    return output, [i for i, _ in masked], [label for _, label in masked]


def create_instances_from_document(all_documents, document_index: int, max_seq_length: int,
                                   short_seq_prob: float, masked_lm_prob: float,
                                   max_predictions_per_seq: int, specials: Specials,
                                   rng: random.Random, do_whole_word_mask: bool = False,
                                   mask: bool = True) -> list[Instance]:
    """NSP pairs of one document: chunks up to a target length, A a random prefix of the
    chunk, B its rest or (50%, or a one-sentence chunk) a span of a random other document."""
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    instances = []
    chunk: list[list[int]] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for s in chunk[:a_end] for t in s]
            tokens_b: list[int] = []
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                target_b = target - len(tokens_a)
                for _ in range(10):
                    random_index = rng.randint(0, len(all_documents) - 1)
                    if random_index != document_index:
                        break
                other = all_documents[random_index]
                for j in range(rng.randint(0, len(other) - 1), len(other)):
                    tokens_b.extend(other[j])
                    if len(tokens_b) >= target_b:
                        break
                i -= len(chunk) - a_end        # the unused sentences go back to the document
            else:
                is_random_next = False
                tokens_b = [t for s in chunk[a_end:] for t in s]
            truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            tokens = [specials.cls_id, *tokens_a, specials.sep_id, *tokens_b, specials.sep_id]
            segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            positions: list[int] = []
            labels: list[int] = []
            if mask:
                tokens, positions, labels = create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, specials, rng,
                    do_whole_word_mask)
            instances.append(Instance(tokens, segment_ids, is_random_next, positions, labels))
            chunk, length = [], 0
        i += 1
    return instances


def create_training_instances(documents: list[list[list[int]]], specials: Specials, *,
                              max_seq_length: int = 128, dupe_factor: int = 10,
                              short_seq_prob: float = 0.1, masked_lm_prob: float = 0.15,
                              max_predictions_per_seq: int = 20, seed: int = 12345,
                              do_whole_word_mask: bool = False,
                              mask: bool = True) -> list[Instance]:
    """All instances of a corpus: documents shuffled, `dupe_factor` passes, all shuffled.
    `mask=False` leaves the instances unmasked (and draws no masking randomness)."""
    rng = random.Random(seed)
    documents = list(documents)
    rng.shuffle(documents)
    instances: list[Instance] = []
    for _ in range(dupe_factor):
        for d in range(len(documents)):
            instances.extend(create_instances_from_document(
                documents, d, max_seq_length, short_seq_prob, masked_lm_prob,
                max_predictions_per_seq, specials, rng, do_whole_word_mask, mask))
    rng.shuffle(instances)
    return instances
