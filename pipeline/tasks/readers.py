"""Fine-tuning data files as rows: JSONL, CSV/TSV, Parquet, SQuAD JSON, CoNLL; local or s3://.

`read_rows(path)` gives a list of dicts whatever the format; `read_squad` flattens SQuAD
v1.1/v2.0 JSON (or a table of HF-style `question/context/answers` rows) into one row per
question; `read_conll` turns CoNLL files (a token per line, the tag in the last column, blank
lines between sentences, -DOCSTART- lines skipped) into `tokens`/`tags` rows. Compressed
files (.gz/.bz2/.zst) are read transparently. Problems a user can cause (no such file, a
malformed line, a missing column) are one-line `InputError`s naming the file and the fix.
Never tokenizes and never imports Ray, MLflow or torch.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pipeline.errors import InputError
from pipeline.storage import filesystem, is_remote, transport_params

FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet", "squad", "conll")
_COMPRESSED = (".gz", ".bz2", ".zst", ".xz")
_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
              ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".conll": "conll",
              ".conllx": "conll", ".iob": "conll", ".bio": "conll", ".txt": "conll"}


def detect_format(path: str, fmt: str = "auto") -> str:
    """The format named, or the one the file name says (compression suffixes ignored)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise InputError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    name = Path(str(path)).name.lower()
    for c in _COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
    found = _BY_SUFFIX.get(Path(name).suffix)
    if found is None:
        raise InputError(f"{path}: cannot tell the format from the name; pass --format "
                         f"({', '.join(FORMATS[1:])})")
    return found


def _open_text(path: str):
    import smart_open
    if not is_remote(path) and not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    try:
        return smart_open.open(str(path), "r", encoding="utf-8", newline="",
                               transport_params=transport_params(path))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot open it ({str(e).splitlines()[0]})") from None


def _read_text(path: str) -> str:
    try:
        with _open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({str(e).splitlines()[0]})") from None


def _jsonl(path: str, text: str) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _delimited(path: str, text: str, delimiter: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    if not reader.fieldnames:
        raise InputError(f"{path}: empty file (expected a header line)")
    rows = []
    for row in reader:
        if None in row:  # more fields than the header names
            raise InputError(f"{path}: line {reader.line_num} has more fields than the header")
        rows.append(row)
    return rows


def _parquet(path: str) -> list[dict]:
    import pyarrow.parquet as pq
    fs, inner = filesystem(path)
    try:
        return pq.read_table(inner, filesystem=fs).to_pylist()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as e:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable Parquet file "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None


def read_rows(path: str, fmt: str = "auto") -> list[dict]:
    """Every record of a table-like file as a dict (CSV/TSV values stay strings)."""
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        return _parquet(path)
    if fmt == "conll":
        return read_conll(path)
    if fmt == "squad":
        fmt = "json"
    text = _read_text(path)
    if fmt == "csv":
        return _delimited(path, text, ",")
    if fmt == "tsv":
        return _delimited(path, text, "\t")
    if fmt == "json":  # one JSON document (SQuAD, or a list of records), else JSON lines
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "data" in data:
            return squad_rows(path, data)
        if isinstance(data, list):
            if not all(isinstance(r, dict) for r in data):
                raise InputError(f"{path}: the JSON list must hold objects (one per record)")
            return data
    return _jsonl(path, text)


def require_columns(rows: list[dict], names: list[str], path: str) -> None:
    """One error naming the first column a row lacks, and the columns it has."""
    if not rows:
        raise InputError(f"{path}: no records")
    for i, row in enumerate(rows):
        for name in names:
            if name not in row:
                raise InputError(f"{path}: record {i + 1} has no column '{name}' (columns: "
                                 f"{', '.join(map(str, row))}); pick one with the column options")


# ------------------------------------------------------------------ CoNLL

def read_conll(path: str) -> list[dict]:
    """Sentences of a CoNLL file as {'tokens': [...], 'tags': [...]} (tag = last column)."""
    rows, tokens, tags = [], [], []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise InputError(f"{path}: line {n} has one field; a CoNLL line is 'TOKEN ... TAG'")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    if not rows:
        raise InputError(f"{path}: no sentences (expected CoNLL: a token and its tag per line)")
    return rows


# ------------------------------------------------------------------ SQuAD

def squad_rows(path: str, data: dict) -> list[dict]:
    """SQuAD JSON -> one row per question: id, question, context, answers, is_impossible.

    answers: [{'text', 'answer_start'}] (empty when unanswerable; v2.0 keeps the would-be
    answers of impossible questions in 'plausible_answers', which are never trained on)."""
    rows = []
    try:
        for article in data["data"]:
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    impossible = bool(qa.get("is_impossible", False))
                    answers = [] if impossible else [
                        {"text": a["text"], "answer_start": int(a["answer_start"])}
                        for a in qa.get("answers", [])]
                    rows.append({"id": str(qa["id"]), "question": qa["question"],
                                 "context": context, "answers": answers,
                                 "is_impossible": impossible or not answers})
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: not SQuAD JSON (missing {e} in data/paragraphs/qas)") from None
    return rows


def read_squad(path: str, fmt: str = "auto") -> list[dict]:
    """Questions from SQuAD JSON, or a table whose rows have question, context and answers
    ({'text': [...], 'answer_start': [...]} as in HF datasets, or a list of such dicts)."""
    fmt = detect_format(path, fmt)
    rows = read_rows(path, "json" if fmt == "squad" else fmt)
    require_columns(rows, ["question", "context", "answers"], path)
    out = []
    for i, r in enumerate(rows):
        answers = r["answers"]
        if isinstance(answers, str):  # a JSON-encoded column (CSV, Parquet written as text)
            try:
                answers = json.loads(answers) if answers.strip() else []
            except json.JSONDecodeError:
                raise InputError(f"{path}: record {i + 1}: 'answers' is not JSON") from None
        if isinstance(answers, dict):  # HF columnar form
            answers = [{"text": t, "answer_start": int(s)}
                       for t, s in zip(answers.get("text", []), answers.get("answer_start", []))]
        out.append({"id": str(r.get("id", i)), "question": r["question"], "context": r["context"],
                    "answers": list(answers), "is_impossible": not answers})
    return out
