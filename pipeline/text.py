"""Text clean-up and sentence splitting: raw document text in, normalized sentences out.

`normalize` does what every casing mode needs (NFC, control characters out, whitespace
collapsed); `split_sentences` is a fast rule-based splitter for raw documents (the `text`,
`jsonl` and `parquet` formats). Both work on whole strings with regexes, never a Python loop
per character; the splitter runs a few lines of Python per candidate boundary.

Never lower-cases, strips accents or splits CJK characters: the tokenizer's `BertNormalizer`
does that (pipeline/tokenizer.py), so token ids equal `BertTokenizerFast`'s exactly.
"""
from __future__ import annotations

import functools
import itertools
import re
import unicodedata


@functools.cache
def _control_re() -> re.Pattern:
    """Characters of category Cc/Cf that are not whitespace: removed, as BERT's clean_text does.

    Built once per process from the running Python's Unicode tables; tab, newline, CR and the
    other Cc characters that `str.isspace` accepts count as whitespace instead. Cc and Cf
    characters only live in planes 0, 1 and 14, so only those are scanned (≈ 0.1 s).
    """
    ranges: list[tuple[int, int]] = []
    for cp in itertools.chain(range(0x20000), range(0xE0000, 0xF0000)):
        c = chr(cp)
        if unicodedata.category(c) in ("Cc", "Cf") and not c.isspace():
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    cls = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                  for a, b in ranges)
    return re.compile(f"[{cls}]+")


def normalize(text: str) -> str:
    """NFC, control/format characters removed, whitespace runs -> one space, stripped.

    U+FFFD stays (it is text; the tokenizer drops it as BERT does).
    """
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = " ".join(text.split())  # str.split() splits on exactly the `str.isspace` characters
    if not text.isprintable():  # C-speed check: Cc/Cf are never printable; most text has none
        text = " ".join(_control_re().sub("", text).split())
    return text


# --- sentence splitting ---------------------------------------------------------------------

# A candidate boundary: terminal punctuation (a run, e.g. "?!" or "..."), optional closing
# quotes/brackets, then whitespace (group "latin", checked by `_is_boundary`); or a Chinese /
# Japanese terminator run (。！？；, a full-width ． that is not a decimal point, … after a
# non-ASCII character, ! or ? right before an ideograph) with its closing quotes (”’」』）),
# a boundary whatever follows (group "cjk").
# The leading lookahead lets the regex engine jump to the next punctuation mark (2x faster).
_CJK_TERMINATOR = (r"(?:[\u3002\uff01\uff1f\uff1b]|\uff0e(?![0-9\uff10-\uff19])"
                   r"|(?<![\x00-\x7f])\u2026|[!?](?=[\u3400-\u9fff]))")
_CANDIDATE = re.compile(
    r"(?=[.!?\u2026\u3002\uff01\uff1f\uff1b\uff0e])"
    r"(?:(?P<latin>[.!?\u2026]+[\"'\u2019\u201d\u00bb)\]]*)\s+"
    rf"|(?P<cjk>{_CJK_TERMINATOR}+[\u300d\u300f\uff09\u201d\u2019\"']*)\s*)")
_OPENERS = frozenset("\"'\u2018\u201c\u00ab([\u00bf\u00a1\u300c\u300e\u300a\uff08")
# Words after which a single "." does not end a sentence (compared lower-cased, dots inside
# kept: "e.g", "u.s"). Titles, Latin and reference abbreviations, months, place words.
# Company suffixes (Inc., Ltd.) and "etc." are left out: before an upper-case word they
# usually do end a sentence.
_ABBREVIATIONS = frozenset("""
    mr mrs ms mx dr prof st mt ft sr jr gen col lt sgt capt cmdr adm gov sen rep rev hon pres
    fr messrs mme mlle vs e.g i.e cf al ca approx viz esp incl ave blvd rd dept univ
""".split())
# Abbreviations that only hold before a number ("No. 5", "Jan. 12", "Fig. 3"); before an
# upper-case word the "." ends the sentence ("The answer was No. Then ...").
_NUMBER_ABBREVIATIONS = frozenset("""
    no nos op art fig figs vol vols pp ch sec ed
    jan feb mar apr jun jul aug sep sept oct nov dec
""".split())
_INITIALISM = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "U.S", "e.g", "Ph.D" (before the last .)
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")  # a blank line always ends a sentence


def _is_cjk(c: str) -> bool:
    """A CJK ideograph, kana or hangul: a script that needs no space between sentences."""
    return "\u2e80" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" or "\uf900" <= c <= "\ufaff" \
        or "\U00020000" <= c <= "\U0003134f"


def _is_boundary(text: str, punct_start: int, punct: str, next_char: str) -> bool:
    """Whether the latin candidate `punct` at `punct_start`, followed by `next_char`, ends a
    sentence: the next sentence must start with an upper-case letter, a digit, an opener or
    a CJK character, and a lone "." must not follow an abbreviation or a single initial
    ("J. R. R. Tolkien")."""
    if not (next_char.isupper() or next_char.isdigit() or next_char in _OPENERS
            or _is_cjk(next_char)):
        return False
    if punct.rstrip("\"'\u2019\u201d\u00bb)]") != ".":
        return True  # "?", "!", "...", "?!": always a boundary before an upper-case start
    word_start = text.rfind(" ", 0, punct_start) + 1
    word = text[word_start:punct_start].lstrip("\"'(\u201c\u2018[\u00ab")
    if len(word) == 1 and word.isalpha() and not _is_cjk(word):
        return False  # an initial: "J." / "C."
    low = word.lower()
    if low in _ABBREVIATIONS:
        return False
    if low in _NUMBER_ABBREVIATIONS:
        return not next_char.isdigit()
    return _INITIALISM.fullmatch(word) is None


def _split_paragraph(text: str, out: list[str]) -> None:
    start = 0
    for m in _CANDIDATE.finditer(text):
        end = m.end()
        if end >= len(text):
            break
        if m.group("latin") is not None:
            if not _is_boundary(text, m.start(), m.group("latin"), text[end]):
                continue
        sentence = text[start:end].strip()
        if sentence:
            out.append(sentence)
        start = end
    tail = text[start:].strip()
    if tail:
        out.append(tail)


def split_sentences(text: str) -> list[str]:
    """Split a raw document into normalized, non-empty sentences.

    Splits after . ! ? ... (and closing quotes/brackets) followed by whitespace and an
    upper-case letter, a digit, an opening quote or a CJK character, but not after common
    abbreviations (Mr., Dr., e.g., U.S., St., No. 5), single initials or inside decimal
    numbers; always after Chinese/Japanese terminators (。！？；, ……, a full-width ． that is
    not a decimal point) and the closing quotes that follow them (”’」』）), and at blank lines.
    """
    out: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        _split_paragraph(normalize(paragraph), out)
    return out
