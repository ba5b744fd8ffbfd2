"""Word segmenters for whole-word masking: which tokens of a sentence form one masking group.

`--word-segmenter jieba` (or `module:function`, any callable that returns the words of a
text in order) turns Chinese whole-word masking on, as in Chinese-BERT-wwm: the characters
of one segmenter word form one group. `encode_with_word_starts` tokenizes a batch of
sentences exactly as `pipeline.tokenizer.encode_sentences` does (same ids) and returns the
word-start flags `pipeline.masking` consumes:
- a CJK-character token (Google's `_is_chinese_char` ranges) continues the group of the
  token before it when both lie in the same segmenter word;
- every other token groups by "##" as WordPiece does (a "##" piece continues);
- the first token of a sentence always starts a group.

The segmenter runs once per batch on the batch's sentences joined by newlines (jieba never
joins across a newline), in the worker that tokenizes (pass 1); it is loaded once per
process. jieba runs in its exact mode without the HMM for unknown words
(`jieba.cut(text, HMM=False)`): deterministic, dictionary words only, ≈ 1.3x faster than
with the HMM. Never changes a token id (the tokenizer is `pipeline.tokenizer`'s), never
reads files.
"""
from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Tokenizer

from pipeline.errors import InputError
from pipeline.tokenizer import is_cjk

Segment = Callable[[str], list[str]]
_LOADED: dict[str, Segment] = {}

JIEBA_VERSION = "0.42.1"


def cache_dir() -> Path:
    """bertpipe's cache (`$BERTPIPE_CACHE`, default ~/.cache/bertpipe, as in jobs/assets.py):
    jieba's prefix-dict cache goes there instead of the system temp dir."""
    return Path(os.environ.get("BERTPIPE_CACHE", Path.home() / ".cache" / "bertpipe"))


def _load_jieba() -> Segment:
    try:
        import jieba
    except ImportError:
        raise InputError(f"--word-segmenter jieba: the jieba package is not installed; "
                         f"pip install jieba=={JIEBA_VERSION}") from None
    jieba.setLogLevel(logging.WARNING)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    jieba.dt.tmp_dir = str(cache)
    jieba.initialize()   # ≈ 1 s the first time (builds its cache), ≈ 0.5 s after

    def segment(text: str) -> list[str]:
        return jieba.lcut(text, HMM=False)
    return segment


def _load_function(spec: str) -> Segment:
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"--word-segmenter {spec}: cannot import {module_name} ({e}); "
                         "pass jieba or MODULE:FUNCTION importable on every worker") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"--word-segmenter {spec}: {module_name} has no function {name!r}; "
                         "pass MODULE:FUNCTION, a function returning the words of a text")
    return fn


def check_segmenter(spec: str) -> None:
    """Fail on the driver, in one line, when the segmenter spec names nothing usable."""
    if spec != "jieba" and (spec.count(":") != 1 or not all(spec.split(":"))):
        raise InputError(f"--word-segmenter {spec}: expected jieba or MODULE:FUNCTION")
    if spec == "jieba":
        if importlib.util.find_spec("jieba") is None:
            raise InputError(f"--word-segmenter jieba: the jieba package is not installed; "
                             f"pip install jieba=={JIEBA_VERSION}")
    else:
        _load_function(spec)


def load_segmenter(spec: str) -> Segment:
    """The segmenter named by `spec` ("jieba" or "module:function"), loaded once per process."""
    if spec not in _LOADED:
        check_segmenter(spec)
        _LOADED[spec] = _load_jieba() if spec == "jieba" else _load_function(spec)
    return _LOADED[spec]


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def word_ids(text: str, words: list[str]) -> np.ndarray:
    """int64 per character of `text`: the index of the word it belongs to.

    Fast path when the words concatenate to the text (jieba's do); otherwise each word is
    looked up in order, and characters no word covers (whitespace a segmenter dropped) get
    an id of their own.
    """
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    if int(lengths.sum()) == len(text) and "".join(words) == text:
        return np.repeat(np.arange(len(words), dtype=np.int64), lengths)
    out = -1 - np.arange(len(text), dtype=np.int64)    # uncovered: unique negative ids
    pos = 0
    for i, w in enumerate(words):
        at = text.find(w, pos) if w else -1
        if at < 0:
            continue                                     # not in the text: ignored
        out[at:at + len(w)] = i
        pos = at + len(w)
    return out


def encode_with_word_starts(tokenizer: Tokenizer, sentences: list[str],
                            is_subword: np.ndarray, segment: Segment
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat int32 ids, int32 length per sentence, uint8 word start per id) of `sentences`.

    The ids equal `encode_sentences`'; `is_subword` is `VocabInfo.is_subword`.
    """
    # encode_batch (not _fast) for the character offsets: ≈ 10% more tokenizer time
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int32,
                          count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings),
                      dtype=np.int32, count=total)
    if total == 0:
        return ids, lengths, np.zeros(0, np.uint8)
    offsets = np.fromiter(itertools.chain.from_iterable(
        itertools.chain.from_iterable(e.offsets) for e in encodings),
        dtype=np.int64, count=2 * total)[0::2]           # each token's first character
    text = "\n".join(sentences)
    sentence_base = np.zeros(len(sentences), dtype=np.int64)
    np.cumsum([len(s) + 1 for s in sentences[:-1]], out=sentence_base[1:])
    first_token = np.zeros(len(sentences), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first_token[1:])
    char = np.repeat(sentence_base, lengths) + offsets   # (total,) index into `text`
    word = word_ids(text, segment(text))[char]
    cjk = is_cjk(_codepoints(text))[char]
    same_word = np.zeros(total, dtype=np.bool_)
    same_word[1:] = word[1:] == word[:-1]
    continues = np.where(cjk, same_word, is_subword[ids])
    continues[first_token[lengths > 0]] = False
    return ids, lengths, (~continues).view(np.uint8)
