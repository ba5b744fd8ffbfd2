"""Reading documents: every format and compression, and bad input counted, never a crash."""
import bz2
import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.errors import InputError
from pipeline.read import MAX_LINE_BYTES, FileStats, check_first_record, read_documents
from pipeline.storage import expand_inputs

BERT_TEXT = "First sentence.\nSecond one.\n\nOther document.\n"


def _read(path, fmt, **kw):
    stats = FileStats(str(path))
    docs = list(read_documents(str(path), fmt, stats, **kw))
    return docs, stats


def test_bert_format_is_one_sentence_per_line_blank_line_between_documents(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text(BERT_TEXT)
    docs, stats = _read(p, "bert")
    assert docs == [["First sentence.", "Second one."], ["Other document."]]
    assert (stats.documents, stats.sentences) == (2, 3)
    assert stats.sha256 == hashlib.sha256(BERT_TEXT.encode()).hexdigest()
    assert stats.size == len(BERT_TEXT.encode())


@pytest.mark.parametrize("suffix,compress", [
    (".gz", gzip.compress), (".bz2", bz2.compress),
    (".zst", lambda b: zstandard.ZstdCompressor().compress(b))])
def test_compressed_inputs_read_transparently_and_hash_the_raw_bytes(tmp_path, suffix, compress):
    raw = compress(BERT_TEXT.encode())
    p = tmp_path / f"a.txt{suffix}"
    p.write_bytes(raw)
    docs, stats = _read(p, "bert")
    assert docs == [["First sentence.", "Second one."], ["Other document."]]
    assert stats.sha256 == hashlib.sha256(raw).hexdigest()


def test_text_format_splits_blocks_into_sentences(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("Dr. Smith went home. He slept.\nStill the same block.\n\nNew doc here.\n")
    docs, _ = _read(p, "text")
    assert len(docs) == 2
    assert docs[0][0] == "Dr. Smith went home."
    assert docs[1] == ["New doc here."]


def test_jsonl_missing_field_and_bad_json_are_counted_skips(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join([json.dumps({"text": "One. Two."}), "{not json",
                            json.dumps({"body": "x"}), json.dumps({"text": None}),
                            json.dumps({"text": "Three."})]) + "\n")
    docs, stats = _read(p, "jsonl")
    assert docs == [["One.", "Two."], ["Three."]]
    assert stats.skipped == {"invalid JSON line": 1, "record without a text field 'text'": 2}


def test_invalid_utf8_lines_are_skipped_and_counted(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"Good line.\nBad \xff\xfe line.\nAlso good.\n")
    docs, stats = _read(p, "bert")
    assert docs == [["Good line.", "Also good."]]
    assert stats.skipped == {"invalid UTF-8 line": 1}


def test_empty_and_binary_files_are_skipped_whole(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 100)
    assert _read(empty, "bert")[1].skipped == {"empty file": 1}
    docs, stats = _read(binary, "text")
    assert docs == [] and stats.skipped == {"binary file (NUL bytes)": 1}


def test_multi_megabyte_line_is_read_and_an_oversized_one_skipped(tmp_path):
    p = tmp_path / "a.txt"
    big = ("word " * (3 << 20 // 5)).strip()  # ≈ 3 MB on one line: kept
    huge = "x" * (MAX_LINE_BYTES + 10)  # over the limit: skipped, never loaded whole
    p.write_text(f"Before.\n{big}\n{huge}\nAfter.\n")
    docs, stats = _read(p, "bert")
    assert docs[0][0] == "Before." and docs[0][-1] == "After."
    assert len(docs[0]) == 3 and len(docs[0][1]) == len(big)
    assert stats.skipped == {f"line over {MAX_LINE_BYTES >> 20} MiB": 1}


def test_parquet_text_column_and_missing_column_error(tmp_path):
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["Alpha beta. Gamma delta.", None], "id": [1, 2]}), p)
    docs, stats = _read(p, "parquet", text_column="body")
    assert docs == [["Alpha beta.", "Gamma delta."]]
    assert stats.skipped == {"null or non-text 'body' value": 1}
    with pytest.raises(InputError, match="no column 'text'.*--text-column"):
        _read(p, "parquet")
    with pytest.raises(InputError, match="no column 'text'"):
        check_first_record(str(p), "parquet", "text", "text")


def test_not_a_parquet_file_is_a_counted_skip(tmp_path):
    p = tmp_path / "a.parquet"
    p.write_text("hello")
    docs, stats = _read(p, "parquet")
    assert docs == [] and sum(stats.skipped.values()) == 1


def test_jsonl_wrong_text_field_fails_fast_naming_the_fields(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"title": "t", "extract": "x"}) + "\n")
    with pytest.raises(InputError, match="no field 'text' \\(fields: title, extract\\)"):
        check_first_record(str(p), "jsonl", "text", "text")


def test_expand_inputs_takes_files_directories_and_globs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.txt", "d/sub/b.txt", "d/.hidden", "c.jsonl"):
        (tmp_path / name).write_text("x\n")
    assert [p for p, _ in expand_inputs([str(tmp_path / "d")])] == \
        [str(tmp_path / "d/a.txt"), str(tmp_path / "d/sub/b.txt")]
    assert [p for p, _ in expand_inputs([str(tmp_path / "*.jsonl")])] == [str(tmp_path / "c.jsonl")]
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.txt")])
    with pytest.raises(InputError, match="matches no files"):
        expand_inputs([str(tmp_path / "*.parquet")])


# --- line-aligned parts: one file read by many tasks ---------------------------------------

def _corpus_bytes(fmt, rng, docs=120):
    """A file of `fmt` with documents of 1-6 lines (some blank-line runs, CRLF, a bad
    UTF-8 line and a whitespace-only line inside)."""
    out = []
    for d in range(docs):
        lines = [f"Doc {d} sentence {i} {'x' * int(rng.integers(0, 60))}."
                 for i in range(int(rng.integers(1, 7)))]
        if fmt == "jsonl":
            out.append(json.dumps({"text": " ".join(lines)}).encode() + b"\n")
        else:
            out.append("\n".join(lines).encode() + b"\n" + b"\n" * int(rng.integers(1, 3)))
        if d == 30:
            out.append(b"\xff\xfe not utf-8\n" if fmt != "jsonl" else b"{bad json\n")
        if d == 50 and fmt != "jsonl":
            out.append(b"   \t \r\n")
    return b"".join(out)


@pytest.mark.parametrize("fmt", ["bert", "text", "jsonl"])
@pytest.mark.parametrize("suffix,compress", [("", None), (".gz", gzip.compress),
                                             (".zst", lambda b: zstandard.ZstdCompressor()
                                              .compress(b))])
def test_parts_of_a_file_hold_each_document_once_whatever_the_cuts(tmp_path, fmt, suffix,
                                                                    compress):
    import numpy as np

    from pipeline.read import Part, plan_parts, read_part
    data = _corpus_bytes(fmt, np.random.default_rng(0))
    path = tmp_path / f"c.{fmt}{suffix}"
    path.write_bytes(compress(data) if compress else data)
    whole_stats = FileStats(str(path))
    whole = list(read_part(str(path), fmt, whole_stats))
    assert len(whole) >= 120
    rng = np.random.default_rng(1)
    for trial in range(6):
        cuts = sorted(set(rng.integers(1, len(data), size=trial + 1).tolist()))
        bounds = [0, *cuts, None]
        stats = [FileStats(str(path)) for _ in range(len(bounds) - 1)]
        got = []
        for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
            got += list(read_part(str(path), fmt, stats[k], part=Part(k, a, b)))
        assert got == whole, cuts
        assert sum(s.documents for s in stats) == whole_stats.documents
        assert sum(sum(s.skipped.values()) for s in stats) == sum(whole_stats.skipped.values())
        assert (stats[0].size, stats[0].sha256) == (whole_stats.size, whole_stats.sha256)
    parts = plan_parts(str(path), path.stat().st_size, fmt, split_bytes=len(data) // 5)
    assert len(parts) >= 4 and parts[0].start == 0 and parts[-1].end is None
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))
