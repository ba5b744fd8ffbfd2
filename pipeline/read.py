"""Documents out of one input file, whatever its format and compression.

A document is a list of normalized sentences. Bad input never raises from here: a line that
is not UTF-8, a binary or empty file, an over-long line, a record without the text field is
a counted skip with its reason (recorded in the manifest). Only problems that mean the user
named the wrong thing (a Parquet file without the text column) raise `InputError`.
The raw bytes are hashed while they are read, so checksums cost no second pass.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from pipeline.errors import InputError
from pipeline.storage import filesystem, open_binary
from pipeline.text import normalize, split_sentences

MAX_LINE_BYTES = 16 << 20
"""Lines longer than this are skipped (counted), never loaded whole."""
SNIFF_BYTES = 8192


@dataclass
class FileStats:
    path: str
    size: int = 0
    sha256: str = ""
    documents: int = 0
    sentences: int = 0
    skipped: Counter = field(default_factory=Counter)


class _HashingReader(io.RawIOBase):
    """Passes bytes through while hashing and counting them."""

    def __init__(self, f):
        self.f, self.hash, self.count = f, hashlib.sha256(), 0

    def readable(self):
        return True

    def readinto(self, buf):
        data = self.f.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.hash.update(data)
        self.count += n
        return n

    def drain(self):
        while self.read(1 << 20):
            pass


def _decompressed(raw, path: str):
    name = path.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if name.endswith(".bz2"):
        return bz2.BZ2File(raw)
    if name.endswith(".xz"):
        return lzma.LZMAFile(raw)
    if name.endswith(".zst"):
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _lines(stream, stats: FileStats) -> Iterator[str]:
    """Decoded lines without their newline; bad ones are counted and dropped."""
    reader = io.BufferedReader(stream, buffer_size=1 << 20)
    head = reader.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    if not head:
        stats.skipped["empty file"] += 1
        return
    if b"\x00" in head:
        stats.skipped["binary file (NUL bytes)"] += 1
        return
    while True:
        line = reader.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := reader.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            stats.skipped[f"line over {MAX_LINE_BYTES >> 20} MiB"] += 1
            continue
        try:
            yield line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            stats.skipped["invalid UTF-8 line"] += 1


def _bert_documents(lines) -> Iterator[list[str]]:
    doc: list[str] = []
    for line in lines:
        sentence = normalize(line)
        if sentence:
            doc.append(sentence)
        elif not line.strip() and doc:
            yield doc
            doc = []
    if doc:
        yield doc


def _text_documents(lines) -> Iterator[list[str]]:
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line)
        elif block:
            yield split_sentences(" ".join(block))
            block = []
    if block:
        yield split_sentences(" ".join(block))


def _jsonl_documents(lines, text_field: str, stats: FileStats) -> Iterator[list[str]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            stats.skipped["invalid JSON line"] += 1
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats.skipped[f"record without a text field '{text_field}'"] += 1
            continue
        yield split_sentences(text)


def _parquet_documents(path: str, text_column: str, stats: FileStats) -> Iterator[list[str]]:
    import pyarrow.parquet as pq
    fs, inner = filesystem(path)
    try:
        pf = pq.ParquetFile(fs.open_input_file(inner))
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        stats.skipped[f"not a readable Parquet file ({type(e).__name__})"] += 1
        return
    if text_column not in pf.schema_arrow.names:
        raise InputError(f"{path}: no column '{text_column}' (columns: "
                         f"{', '.join(pf.schema_arrow.names)}); pass --text-column NAME")
    for batch in pf.iter_batches(columns=[text_column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                stats.skipped[f"null or non-text '{text_column}' value"] += 1
                continue
            yield split_sentences(text)


def read_documents(path: str, fmt: str, stats: FileStats, text_field: str = "text",
                   text_column: str = "text") -> Iterator[list[str]]:
    """Yield the documents of one file (lists of sentences); fills `stats` as it goes."""
    if fmt == "parquet":
        docs = _parquet_documents(path, text_column, stats)
        raw = None
    else:
        raw = _HashingReader(open_binary(path))
        lines = _lines(_decompressed(raw, path), stats)
        docs = {"bert": lambda: _bert_documents(lines),
                "text": lambda: _text_documents(lines),
                "jsonl": lambda: _jsonl_documents(lines, text_field, stats)}[fmt]()
    try:
        for doc in docs:
            if doc:
                stats.documents += 1
                stats.sentences += len(doc)
                yield doc
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        stats.skipped[f"corrupt or truncated data ({type(e).__name__})"] += 1
    if raw is not None:
        raw.drain()
        raw.f.close()
        stats.size, stats.sha256 = raw.count, raw.hash.hexdigest()
    else:
        stats.size, stats.sha256 = _checksum(path)


def _checksum(path: str) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open_binary(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def check_first_record(path: str, fmt: str, text_field: str, text_column: str) -> None:
    """Fail fast, on the driver, when the user named a field or column the data lacks."""
    if fmt == "parquet":
        import pyarrow.parquet as pq
        fs, inner = filesystem(path)
        try:
            names = pq.ParquetFile(fs.open_input_file(inner)).schema_arrow.names
        except Exception:
            return  # counted as a skip when the file is read
        if text_column not in names:
            raise InputError(f"{path}: no column '{text_column}' (columns: {', '.join(names)});"
                             f" pass --text-column NAME")
    elif fmt == "jsonl":
        with open_binary(path) as raw:
            for line in _lines(_decompressed(raw, path), FileStats(path)):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return
                if isinstance(record, dict) and text_field not in record:
                    raise InputError(f"{path}: first record has no field '{text_field}' "
                                     f"(fields: {', '.join(record)}); pass --text-field NAME")
                return
