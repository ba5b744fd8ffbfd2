"""Documents out of one input file, whatever its format and compression.

A document is a list of normalized sentences. Bad input never raises from here: a line that
is not UTF-8, a binary or empty file, an over-long line, a record without the text field is
a counted skip with its reason (recorded in the manifest). Only problems that mean the user
named the wrong thing (a Parquet file without the text column) raise `InputError`.
The raw bytes are hashed while they are read, so checksums cost no second pass. A large file
can be read as line-aligned parts by separate tasks (`Part`, `plan_parts`); each document
comes with a key, where it starts, that does not depend on the parts.
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


class _Unseekable(io.RawIOBase):
    """A decompressed stream read forward only (its seek() would rewind and re-inflate)."""

    def __init__(self, f):
        self.f = f

    def readable(self):
        return True

    def readinto(self, buf):
        data = self.f.read(len(buf))
        buf[:len(data)] = data
        return len(data)


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


@dataclass(frozen=True)
class Part:
    """A line-aligned part of one input file, so that one large file is read by many tasks:
    the documents that start in bytes [start, end) of the file's (decompressed) text.

    The cut between two parts is the first document boundary at or after the nominal
    offset: any line start for JSONL, a blank line for the bert and text formats (a
    document never spans one). Every part finds it the same way, so the parts hold each
    document exactly once whatever the nominal offsets. Compressed files cannot seek: a
    part decompresses from the file's start and skips to its range (decompression is far
    cheaper than tokenization). Parquet files are read whole (one part).
    """
    index: int = 0
    """Part 0 also hashes the whole file and counts file-level skips (empty, binary)"""
    start: int = 0
    end: int | None = None
    """None: to the end of the file"""


WHOLE = Part()


def _blank(line: bytes) -> bool:
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def _skip(reader, n: int) -> int:
    """Consume n bytes (fewer at EOF) without looking at them; returns how many."""
    done = 0
    while done < n:
        chunk = reader.read(min(n - done, 1 << 20))
        if not chunk:
            break
        done += len(chunk)
    return done


def _readline(reader) -> tuple[bytes, int]:
    """The next line (at most MAX_LINE_BYTES + 1 of it) and its full length in bytes: the
    rest of an over-long line is consumed, never loaded."""
    line = reader.readline(MAX_LINE_BYTES + 1)
    size = len(line)
    if size > MAX_LINE_BYTES and not line.endswith(b"\n"):
        while (rest := reader.readline(MAX_LINE_BYTES)):
            size += len(rest)
            if rest.endswith(b"\n"):
                break
    return line, size


def _lines(stream, stats: FileStats, part: Part = WHOLE, blank_cuts: bool = False
           ) -> Iterator[tuple[int, str]]:
    """(offset, decoded line without its newline) of the lines part `part` owns; bad lines
    are counted and dropped. `blank_cuts`: parts are cut at blank lines (documents span
    lines), else at any line."""
    reader = io.BufferedReader(stream, buffer_size=1 << 20)
    head = reader.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    if not head or b"\x00" in head:
        if part.index == 0:
            stats.skipped["empty file" if not head else "binary file (NUL bytes)"] += 1
        return
    pos = 0
    if part.start > 0:
        # the first line start at or after `start`: finish the line holding byte start - 1
        if reader.seekable():   # a plain file; compressed streams decompress and skip
            pos = reader.seek(part.start - 1)
        else:
            pos = _skip(reader, part.start - 1)
        pos += _readline(reader)[1]
        if blank_cuts:  # then the first blank line: the lines before it end a document
            while True:
                line, size = _readline(reader)
                if not line or _blank(line):
                    break
                pos += size
            pos += size
    while True:
        line, size = _readline(reader)
        if not line:
            return
        at, pos = pos, pos + size
        if part.end is not None and at >= part.end and (not blank_cuts or _blank(line)):
            return  # the next part's first line
        if size > MAX_LINE_BYTES:
            stats.skipped[f"line over {MAX_LINE_BYTES >> 20} MiB"] += 1
            continue
        try:
            yield at, line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            stats.skipped["invalid UTF-8 line"] += 1


def _bert_documents(lines) -> Iterator[tuple[int, list[str]]]:
    doc: list[str] = []
    at = 0
    for offset, line in lines:
        sentence = normalize(line)
        if sentence:
            if not doc:
                at = offset
            doc.append(sentence)
        elif not line.strip() and doc:
            yield at, doc
            doc = []
    if doc:
        yield at, doc


def _text_documents(lines) -> Iterator[tuple[int, list[str]]]:
    block: list[str] = []
    at = 0
    for offset, line in lines:
        if line.strip():
            if not block:
                at = offset
            block.append(line)
        elif block:
            yield at, split_sentences(" ".join(block))
            block = []
    if block:
        yield at, split_sentences(" ".join(block))


def _jsonl_documents(lines, text_field: str, stats: FileStats
                     ) -> Iterator[tuple[int, list[str]]]:
    for offset, line in lines:
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
        yield offset, split_sentences(text)


def _parquet_documents(path: str, text_column: str, stats: FileStats
                       ) -> Iterator[tuple[int, list[str]]]:
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
    row = 0
    for batch in pf.iter_batches(columns=[text_column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                stats.skipped[f"null or non-text '{text_column}' value"] += 1
                continue
            yield row - 1, split_sentences(text)


def read_part(path: str, fmt: str, stats: FileStats, text_field: str = "text",
              text_column: str = "text", part: Part = WHOLE) -> Iterator[tuple[int, list[str]]]:
    """Yield (key, document) for the documents of one part of a file; fills `stats` as it
    goes. The key is where the document starts (its first line's byte offset in the
    decompressed text, a Parquet row's index): the same however the file is split."""
    raw = hashing = None
    if fmt == "parquet":
        docs = _parquet_documents(path, text_column, stats) if part.index == 0 else iter(())
    else:
        raw = open_binary(path)
        hashing = _HashingReader(raw) if part.index == 0 else None
        stream = _decompressed(hashing or raw, path)
        if stream is not raw and _is_compressed(path):
            stream = _Unseekable(stream)  # forward seeks would decompress just the same
        lines = _lines(stream, stats, part, blank_cuts=fmt != "jsonl")
        docs = {"bert": lambda: _bert_documents(lines),
                "text": lambda: _text_documents(lines),
                "jsonl": lambda: _jsonl_documents(lines, text_field, stats)}[fmt]()
    try:
        for key, doc in docs:
            if doc:
                stats.documents += 1
                stats.sentences += len(doc)
                yield key, doc
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        stats.skipped[f"corrupt or truncated data ({type(e).__name__})"] += 1
    if hashing is not None:
        hashing.drain()
        stats.size, stats.sha256 = hashing.count, hashing.hash.hexdigest()
    elif fmt == "parquet" and part.index == 0:
        stats.size, stats.sha256 = _checksum(path)
    if raw is not None:
        raw.close()


def read_documents(path: str, fmt: str, stats: FileStats, text_field: str = "text",
                   text_column: str = "text") -> Iterator[list[str]]:
    """Yield the documents of one whole file (lists of sentences); fills `stats` as it goes."""
    for _, doc in read_part(path, fmt, stats, text_field, text_column):
        yield doc


def plan_parts(path: str, size: int, fmt: str, split_bytes: int) -> list[Part]:
    """Nominal parts of about `split_bytes` of text each (one for Parquet and small files).
    A compressed file's text size is estimated from its first MiB's compression ratio."""
    if fmt == "parquet" or (size <= split_bytes and not _is_compressed(path)):
        return [WHOLE]
    text_size = size
    if _is_compressed(path):
        with open_binary(path) as raw:
            sample = raw.read(1 << 20)
        f, text = _decompressed(io.BytesIO(sample), path), 0
        try:
            while (chunk := f.read(1 << 20)) and text < (256 << 20):
                text += len(chunk)
        except (OSError, EOFError, lzma.LZMAError, ValueError):
            pass  # the sample ends mid-stream: what came out so far gives the ratio
        if not text:
            return [WHOLE]
        text_size = size * text // len(sample)
    if text_size <= split_bytes:
        return [WHOLE]
    n = max(1, -(-text_size // split_bytes))
    step = -(-text_size // n)
    return [Part(k, k * step, None if k == n - 1 else (k + 1) * step) for k in range(n)]


def _is_compressed(path: str) -> bool:
    return path.lower().endswith((".gz", ".bz2", ".xz", ".zst"))


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
            for _, line in _lines(_decompressed(raw, path), FileStats(path)):
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
