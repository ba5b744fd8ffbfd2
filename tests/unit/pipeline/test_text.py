"""Normalization and sentence splitting (pipeline/text.py), on hand cases and real Wikipedia."""
from __future__ import annotations

import json
import unicodedata

import pytest

from pipeline.text import normalize, split_sentences


@pytest.fixture(scope="module")
def wiki_texts(wiki_jsonl):
    with open(wiki_jsonl, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


# --- normalize ---------------------------------------------------------------------------

def test_normalize_composes_to_nfc():
    assert normalize("Cafe\u0301 Zu\u0308rich") == "Caf\u00e9 Z\u00fcrich"


def test_normalize_removes_control_and_format_characters():
    # NUL, BEL, DEL (Cc); zero-width space, soft hyphen, BOM, LRM (Cf)
    assert normalize("a\x00b\x07c\x7fd") == "abcd"
    assert normalize("zero\u200bwidth soft\u00adhyphen \ufeffbom \u200eltr") == \
        "zerowidth softhyphen bom ltr"


def test_normalize_collapses_every_kind_of_whitespace_to_one_space():
    text = " a\tb\nc\r\nd\u00a0e\u2003f\u3000g\u2028h\x0b\x0ci  "
    assert normalize(text) == "a b c d e f g h i"


def test_normalize_leaves_no_double_space_where_a_control_character_was_removed():
    assert normalize("a \x00 b") == "a b"


def test_normalize_keeps_case_accents_and_the_replacement_character():
    # lower-casing and accent stripping are the tokenizer's job (BertNormalizer)
    assert normalize("\u00c9COLE na\u00efve \ufffd") == "\u00c9COLE na\u00efve \ufffd"


def test_normalize_is_idempotent_on_real_text(wiki_texts):
    for text in wiki_texts[:500]:
        once = normalize(text)
        assert normalize(once) == once
        assert unicodedata.is_normalized("NFC", once)
        assert "  " not in once and once == once.strip()


# --- split_sentences ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("It rained. Then it stopped.", ["It rained.", "Then it stopped."]),
    ("Really? Yes! Good.", ["Really?", "Yes!", "Good."]),
    ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
    ("It ended (finally.) Next came 1990.", ["It ended (finally.)", "Next came 1990."]),
    ('"Why?" "Because."', ['"Why?"', '"Because."']),
    ("Wait... What happened?", ["Wait...", "What happened?"]),
    ("Founded in 1990. 2000 people came.", ["Founded in 1990.", "2000 people came."]),
])
def test_split_sentences_splits_at_terminal_punctuation_before_a_new_sentence(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", [
    "Mr. Smith met Dr. Jones and Prof. Brown at St. Mary's.",
    "J. R. R. Tolkien wrote it.",
    "Arthur C. Clarke wrote it.",
    "Fruit, e.g. Apples, and i.e. Pears are here.",
    "He moved to the U.S. State officials agreed.",
    "See No. 5 and Fig. 3 on Jan. 12 for details.",
    "The value is 3.14 and the cost was $2.50 today.",
    "He stopped. and then went on.",       # lower-case start: not a new sentence
    "The ratio vs. Others was high.",
])
def test_split_sentences_does_not_split_after_abbreviations_initials_or_decimals(text):
    assert split_sentences(text) == [text]


def test_split_sentences_splits_after_cjk_full_stops_without_spaces():
    assert split_sentences("東京は日本の首都です。大きい！本当？はい") == \
        ["東京は日本の首都です。", "大きい！", "本当？", "はい"]


def test_split_sentences_splits_at_blank_lines_even_without_punctuation():
    assert split_sentences("A heading\n\nThe body starts here.\nIt goes on.") == \
        ["A heading", "The body starts here.", "It goes on."]


def test_split_sentences_returns_normalized_non_empty_sentences():
    out = split_sentences("  First\u200b one.\x00  \n\n \t \n\n  Second\u00a0one.  ")
    assert out == ["First one.", "Second one."]
    assert split_sentences("") == [] and split_sentences(" \n\x00 ") == []


def test_split_sentences_on_wikipedia_keeps_all_text_in_order(wiki_texts):
    # Splitting only cuts between sentences: joining them gives the normalized document.
    for text in wiki_texts[:2000]:
        assert " ".join(split_sentences(text)) == normalize(text)


def test_split_sentences_on_a_known_wikipedia_lead(wiki_texts):
    text = next(t for t in wiki_texts if t.startswith("2001: A Space Odyssey is"))
    sentences = split_sentences(text)
    assert len(sentences) == 3                    # "Arthur C. Clarke." is not a boundary
    assert sentences[0].endswith("co-wrote the screenplay with Arthur C. Clarke.")
    assert sentences[1].startswith("Its plot was inspired")


def test_split_sentences_on_wikipedia_gives_plausible_sentences(wiki_texts):
    sentences = [s for t in wiki_texts for s in split_sentences(t)]
    words = [len(s.split()) for s in sentences]
    mean_words = sum(words) / len(words)
    # English encyclopedic prose averages 20-25 words a sentence; a splitter that misses
    # boundaries (or cuts at every abbreviation) lands far outside this range.
    assert 15 < mean_words < 30, mean_words
    ends = sum(s[-1] in '.!?"\')' for s in sentences) / len(sentences)
    assert ends > 0.97, ends
    starts = sum(s[0].isupper() or s[0].isdigit() or s[0] in "\"'(" for s in sentences)
    assert starts / len(sentences) > 0.97
    # inside a document, no sentence ends right after a title or an initialism like "U.S."
    for text in wiki_texts:
        for s in split_sentences(text)[:-1]:
            assert s.rsplit(" ", 1)[-1] not in ("Mr.", "Dr.", "St.", "Mrs.", "U.S."), s
