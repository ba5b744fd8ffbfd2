"""WordPiece: load or train a vocab, build the tokenizer, encode sentences to flat id arrays.

The tokenizer is the Rust `tokenizers` pipeline that `transformers.BertTokenizerFast` builds
(BertNormalizer + BertPreTokenizer + WordPiece), so ids equal BertTokenizerFast's for the
same vocab and casing. It does the lower-casing, accent stripping and CJK splitting that
BERT uncased does. Per-token work happens in Rust or numpy, never in a Python loop.

Never reads the vocab from anywhere but what it is given, and never adds [CLS]/[SEP]
(pipeline/instances.py places them).
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from pipeline.errors import InputError
from pipeline.schema import SPECIAL_TOKENS
from pipeline.storage import is_remote, open_binary


def _read_vocab_file(path: str) -> bytes:
    with (open_binary(path) if is_remote(path) else open(path, "rb")) as f:
        return f.read()


def load_vocab(path_or_text: str | os.PathLike, *, name: str | None = None) -> list[str]:
    """Read and validate a `vocab.txt` (one token per line; the line number is the id).

    `path_or_text` is a local or s3:// path, or the file's text already read: a string
    with a newline in it, or any string when `name` (how errors refer to the vocab; default:
    the path) is given.
    Raises `InputError("vocab NAME: ...")` if it is unreadable, not UTF-8, empty, has an
    empty line or a duplicate token, or lacks one of `SPECIAL_TOKENS`.
    """
    if isinstance(path_or_text, str) and (name is not None or "\n" in path_or_text):
        text, name = path_or_text, name or "(text)"
    else:
        name = name or str(path_or_text)
        try:
            data = _read_vocab_file(str(path_or_text))
        except OSError as e:
            raise InputError(f"vocab {name}: cannot read it ({e.strerror or e}); "
                             "pass an existing vocab.txt") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"vocab {name}: not UTF-8 text (bad byte at offset {e.start}); "
                             "a vocab.txt is UTF-8, one token per line") from None
    # "\n" only, as transformers reads a vocab: str.splitlines() would also break at U+2028
    # and friends, which are tokens of real vocabs (bert-base-chinese: line 344 is U+2028).
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline after the last token
    tokens = [t[:-1] if t.endswith("\r") else t for t in lines]
    if not tokens:
        raise InputError(f"vocab {name}: empty; a vocab.txt has one token per line")
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if not t.strip(" \t\f\v"):  # Unicode spaces (U+2028, U+3000) are real tokens
            raise InputError(f"vocab {name}: line {i + 1} is empty or blank; "
                             "each line must hold one token")
        if t in seen:
            raise InputError(f"vocab {name}: token {t!r} appears twice "
                             f"(lines {seen[t] + 1} and {i + 1}); ids must be unique")
        seen[t] = i
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise InputError(f"vocab {name}: missing special token(s) {' '.join(missing)}; "
                         f"a BERT vocab needs {' '.join(SPECIAL_TOKENS)}")
    return tokens


def _bert_normalizer(do_lower_case: bool) -> normalizers.BertNormalizer:
    # strip_accents=None follows lowercase, as in BERT uncased / BertTokenizerFast.
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=None, lowercase=do_lower_case)


def build_tokenizer(vocab: list[str], do_lower_case: bool) -> Tokenizer:
    """The WordPiece tokenizer that BertTokenizerFast builds for `vocab` and casing.

    Cheap (≈ 30 ms for 30k tokens): Ray workers get the vocab list and call this.
    Special tokens are not matched in the text: a literal "[SEP]" in a document is split
    like any other text ("[", "sep", "]"), as Google's tokenizer does, where
    BertTokenizerFast would turn it into the real separator id.
    """
    model = WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                      max_input_chars_per_word=100)
    tok = Tokenizer(model)
    tok.normalizer = _bert_normalizer(do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


# Google's `_is_chinese_char`: CJK Unified Ideographs, Extensions A-E, Compatibility. BERT
# makes each of these characters a word of its own.
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def is_cjk(codepoints: np.ndarray) -> np.ndarray:
    """bool per code point (an integer array): a CJK character, as BERT's tokenizer decides."""
    out = np.zeros(codepoints.shape, dtype=np.bool_)
    for lo, hi in CJK_RANGES:
        out |= (codepoints >= lo) & (codepoints <= hi)
    return out


def _alphabet_limit(texts: list[str], vocab_size: int) -> int:
    """Characters the trainer keeps (the most frequent): 1,000, as for English, or every CJK
    character of the texts (up to 3/4 of the vocab). A CJK character is a word of its own,
    never a merge, so the alphabet is the only way into the vocab: Chinese text has
    thousands of them, and a 1,000 limit would leave a quarter of it [UNK]."""
    chars = set().union(*map(set, texts))       # C speed: ≈ 100 MB/s
    codepoints = np.fromiter(map(ord, chars), dtype=np.int64, count=len(chars))
    return max(1000, min(int(is_cjk(codepoints).sum()), vocab_size * 3 // 4))


def _train(texts: Iterable[str], vocab_size: int, do_lower_case: bool,
           special_tokens: list[str], limit_alphabet: int = 1000) -> dict[str, int]:
    tok = Tokenizer(WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = _bert_normalizer(do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=2,
                               limit_alphabet=limit_alphabet,
                               special_tokens=special_tokens, show_progress=False,
                               continuing_subword_prefix="##")
    tok.train_from_iterator(texts, trainer)
    return tok.get_vocab()


def train_vocab(texts: Iterable[str], vocab_size: int, do_lower_case: bool) -> list[str]:
    """Train a WordPiece vocab of at most `vocab_size` tokens on `texts` (Rust, all cores).
    Chinese text keeps all its characters (see `_alphabet_limit`).

    Special tokens come first as `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4), then the
    trainer's order. `texts` is read twice (pass a list): the same texts give the same vocab.

    Why twice: tokenizers 0.23 gives the "##x" continuation characters ids in Rust HashMap
    order (seeded per run), and merges of equal count are tie-broken by id, so one run in
    five or so learns a different token (huggingface/tokenizers#1794). A first pass with
    vocab_size 0 (counting only, ≈ 2/3 of a full run) finds those characters; the second
    pass registers them up front, in sorted order, so every id and merge is reproducible.
    """
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)
    limit = _alphabet_limit(texts, vocab_size)
    alphabet = _train(texts, 0, do_lower_case, list(SPECIAL_TOKENS), limit)
    continuations = sorted(t for t in alphabet if t.startswith("##"))
    vocab = _train(texts, vocab_size, do_lower_case, list(SPECIAL_TOKENS) + continuations,
                   limit)
    by_id = sorted(vocab, key=vocab.__getitem__)
    assert tuple(by_id[:len(SPECIAL_TOKENS)]) == SPECIAL_TOKENS, by_id[:len(SPECIAL_TOKENS)]
    return by_id


# ASCII punctuation, what BertPreTokenizer splits off in printable ASCII text. Spaced out
# by splitting on it and joining with spaces: measured 1.6x faster than re.sub (a template
# expanded per match) and 2x faster than str.translate with a dict.
_ASCII_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")


@dataclass(frozen=True)
class AsciiPath:
    """The same ids for printable ASCII sentences, ≈ 2x faster: for such text BERT's
    normalizer only lower-cases (no control characters, accents or CJK to handle), and its
    pre-tokenizer splits at spaces and ASCII punctuation. So the text is lower-cased and its
    punctuation spaced out in one pass over the whole batch, and a tokenizer with no
    normalizer splits it at whitespace. (Measured on 20k Wikipedia sentences, one core:
    1.17 s through the full tokenizer, 0.73 s without its normalizer, 0.56 s this way.)
    """
    tokenizer: Tokenizer
    do_lower_case: bool

    @classmethod
    def build(cls, vocab: list[str], do_lower_case: bool) -> "AsciiPath":
        tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                  max_input_chars_per_word=100))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return cls(tok, do_lower_case)

    def encode(self, sentences: list[str]) -> list[list[int]]:
        """Ids of printable ASCII sentences (the caller checks; none holds a newline)."""
        text = "\n".join(sentences)
        if self.do_lower_case:
            text = text.lower()
        spaced = " ".join(_ASCII_PUNCT.split(text)).split("\n")
        return [e.ids for e in self.tokenizer.encode_batch_fast(spaced,
                                                                add_special_tokens=False)]


def encode_sentences(tokenizer: Tokenizer, sentences: list[str],
                     ascii_path: AsciiPath | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `sentences`, no special tokens: (flat int32 ids, int32 length each).

    A sentence that encodes to nothing keeps length 0 (the caller drops it). With
    `ascii_path` (built from the same vocab and casing), printable ASCII sentences take it:
    the same ids, faster.
    """
    # encode_batch_fast skips the character offsets we never use (≈ 10% faster than
    # encode_batch). Measured on 1 MB of Wikipedia (215k tokens, one core): encoding
    # ≈ 330-360 ms, then the .ids lists 11 ms and fromiter over chain 4 ms (vs 9 ms to
    # concatenate one array per sentence, 5 ms for np.array(list(chain))).
    if ascii_path is None:
        encodings = tokenizer.encode_batch_fast(sentences, add_special_tokens=False)
        ids = [e.ids for e in encodings]
    else:
        fast = [s.isascii() and s.isprintable() for s in sentences]
        ids = iter(ascii_path.encode([s for s, f in zip(sentences, fast) if f]))
        rest = iter(e.ids for e in tokenizer.encode_batch_fast(
            [s for s, f in zip(sentences, fast) if not f], add_special_tokens=False))
        ids = [next(ids) if f else next(rest) for f in fast]
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                       count=int(lengths.sum()))
    return flat, lengths


_UNUSED = re.compile(r"\[unused\d+\]")


@dataclass(frozen=True)
class VocabInfo:
    """Ids the instance builder and the masker need, derived once from the vocab."""
    size: int
    """Number of tokens (ids are 0..size-1)"""
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: np.ndarray
    """int32 ids of `SPECIAL_TOKENS`: never chosen for masking"""
    is_subword: np.ndarray
    """bool per id: the token is a "##" continuation (whole-word masking groups on it)"""
    random_ids: np.ndarray
    """int32 ids the 10% random replacement draws from: all but specials and [unusedN]"""

    @classmethod
    def from_vocab(cls, vocab: list[str]) -> "VocabInfo":
        index = {t: i for i, t in enumerate(vocab)}
        special = np.array([index[t] for t in SPECIAL_TOKENS], dtype=np.int32)
        is_subword = np.fromiter((t.startswith("##") for t in vocab), dtype=np.bool_,
                                 count=len(vocab))
        keep = np.ones(len(vocab), dtype=np.bool_)
        keep[special] = False
        keep[[i for i, t in enumerate(vocab) if _UNUSED.fullmatch(t)]] = False
        return cls(size=len(vocab), pad_id=index["[PAD]"], unk_id=index["[UNK]"],
                   cls_id=index["[CLS]"], sep_id=index["[SEP]"], mask_id=index["[MASK]"],
                   special_ids=special, is_subword=is_subword,
                   random_ids=np.flatnonzero(keep).astype(np.int32))
