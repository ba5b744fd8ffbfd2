"""The three passes of `prepare`, as pure functions over one file, one block, one shard.

1. `tokenize_file`: read one input file (or one line-aligned part of a large one,
   `pipeline.read.Part`), tokenize its sentences, and deal its documents into shuffle blocks
   by a seeded hash of where they start (a global shuffle that needs no global memory and
   does not depend on how files are split). Each (block, file part) pair becomes one
   piece under `WORK/tokens/`; with whole-word
   masking it carries each token's word-start flag next to its id (`pipeline.masking`).
2. `build_block`: gather one block's documents in hash order, make the NSP pairs and masks
   (`pipeline.instances`), and write its instances by length bin under `WORK/instances/`.
3. `write_shard`: cut shard s out of the bins (`plan_shards` makes every shard equal ±1
   rows, and every bin in it too), write it, and return its sha256.
Ray (in `jobs/prepare.py`) only maps these over files, blocks and shards. Each output is a
function of its inputs alone, so the shards are byte-identical however the work is scheduled.
Memory is bounded by one block, never by the corpus. Scratch files under `WORK/` are
uncompressed Arrow IPC files; only the shards are Parquet.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import PrepareConfig
from pipeline.instances import create_block_instances_flat
from pipeline.masking import word_starts_from_pieces
from pipeline.read import WHOLE, FileStats, Part, read_part
from pipeline.schema import instance_schema, length_bin
from pipeline.segment import encode_with_word_starts, load_segmenter
from pipeline.storage import ensure_parent, filesystem, join, list_names, upload_atomic
from pipeline.tokenizer import AsciiPath, VocabInfo, build_tokenizer, encode_sentences

TOKENS_SCHEMA = pa.schema([
    pa.field("doc_key", pa.uint64(), nullable=False),
    pa.field("ids", pa.list_(pa.int32()), nullable=False),
    pa.field("sentence_lengths", pa.list_(pa.int32()), nullable=False),
])
# Pieces of a whole-word-masking job: the same plus one uint8 word-start flag per id.
TOKENS_SCHEMA_STARTS = TOKENS_SCHEMA.append(
    pa.field("word_starts", pa.list_(pa.uint8()), nullable=False))
ENCODE_BATCH_SENTENCES = 4096
PIECE_FLUSH_TOKENS = 4_000_000
ROW_GROUP_ROWS = 16384


def doc_key(seed: int, file_index: int, offset: int) -> int:
    """A seeded 64-bit hash of where a document starts (file, byte offset or Parquet row):
    the document's block (key % blocks) and its order inside it."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, file_index, offset),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little")


class _PieceWriter:
    """Buffers one (block, file) piece and appends row groups to it."""

    def __init__(self, path: str):
        self.path, self.writer, self.sink, self.rows = path, None, None, []
        self.tokens = 0

    def add(self, key: int, ids: np.ndarray, lengths: np.ndarray,
            starts: np.ndarray | None = None):
        self.rows.append((key, ids, lengths) if starts is None else (key, ids, lengths, starts))
        self.tokens += len(ids)

    def flush(self):
        if not self.rows:
            return
        keys, ids, lens, *starts = zip(*self.rows, strict=True)
        columns = [pa.array(keys, pa.uint64()), _list_array(ids, pa.int32()),
                   _list_array(lens, pa.int32())]
        schema = TOKENS_SCHEMA
        if starts:
            columns.append(_list_array(starts[0], pa.uint8()))
            schema = TOKENS_SCHEMA_STARTS
        table = pa.table(columns, schema=schema)
        if self.writer is None:
            fs, inner = filesystem(self.path)
            ensure_parent(self.path)
            self.sink = fs.open_output_stream(inner)
            self.writer = pa.ipc.new_file(self.sink, schema)
        self.writer.write_table(table)
        self.rows, self.tokens = [], 0

    def close(self):
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.sink.close()


def _read_scratch(fs, inner: str) -> pa.Table:
    """A scratch file (Arrow IPC, uncompressed: written once, read once, ≈ memcpy speed)."""
    with fs.open_input_file(inner) as f:
        return pa.ipc.open_file(f).read_all()


def _list_array(arrays, dtype) -> pa.ListArray:
    """One Arrow list array from numpy arrays, without per-element Python."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(arrays) if len(arrays) else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                    pa.array(flat.astype(dtype.to_pandas_dtype(), copy=False),
                                             dtype))


def tokenize_file(file_index: int, path: str, cfg: PrepareConfig, vocab: list[str],
                  num_blocks: int, work: str, part: Part = WHOLE) -> dict:
    """Pass 1 for one input file, or one part of it. Returns its stats (size and sha256
    from part 0, counts, skips). A document's key hashes where it starts in the file, so
    its block and its place there are the same however the file is split."""
    tokenizer = build_tokenizer(vocab, cfg.do_lower_case)
    ascii_path = AsciiPath.build(vocab, cfg.do_lower_case)
    info = VocabInfo.from_vocab(vocab) if cfg.do_whole_word_mask else None
    segment = load_segmenter(cfg.word_segmenter) \
        if info is not None and cfg.word_segmenter else None
    stats = FileStats(path)
    writers: dict[int, _PieceWriter] = {}
    docs: list[list[str]] = []
    doc_offsets: list[int] = []
    pending = 0
    tokens = 0

    def encode_pending():
        nonlocal tokens
        sentences = [s for d in docs for s in d]
        if segment is not None:
            ids, lengths, starts = encode_with_word_starts(tokenizer, sentences,
                                                           info.is_subword, segment)
        else:
            ids, lengths = encode_sentences(tokenizer, sentences, ascii_path)
            starts = word_starts_from_pieces(ids, info) if info is not None else None
        ends = np.cumsum(lengths)
        sent_start = 0
        for d, offset in zip(docs, doc_offsets, strict=True):
            n = len(d)
            lens = lengths[sent_start:sent_start + n]
            lo = int(ends[sent_start] - lens[0]) if n else 0
            hi = int(ends[sent_start + n - 1]) if n else 0
            sent_start += n
            key = doc_key(cfg.random_seed, file_index, offset)
            kept = lens[lens > 0]
            if len(kept) == 0:
                stats.skipped["document with no tokens"] += 1
                continue
            block = key % num_blocks
            if block not in writers:
                writers[block] = _PieceWriter(join(
                    work, "tokens", f"block-{block:05d}",
                    f"file-{file_index:06d}-{part.index:05d}.arrow"))
            writers[block].add(key, ids[lo:hi], kept.astype(np.int32),
                               None if starts is None else starts[lo:hi])
            tokens += hi - lo
        docs.clear()
        doc_offsets.clear()
        if sum(w.tokens for w in writers.values()) >= PIECE_FLUSH_TOKENS:
            for w in writers.values():  # memory stays bounded whatever the file's size
                w.flush()

    for offset, doc in read_part(path, cfg.format, stats, cfg.text_field, cfg.text_column,
                                 part):
        docs.append(doc)
        doc_offsets.append(offset)
        pending += len(doc)
        if pending >= ENCODE_BATCH_SENTENCES:
            encode_pending()
            pending = 0
    encode_pending()
    for w in writers.values():
        w.close()
    return {"path": path, "part": part.index, "size": stats.size, "sha256": stats.sha256,
            "documents": stats.documents, "sentences": stats.sentences, "tokens": tokens,
            "skipped": dict(stats.skipped)}


def build_block(block_id: int, cfg: PrepareConfig, vocab: VocabInfo, work: str) -> dict:
    """Pass 2 for one block: NSP pairs + masks, written per length bin. Returns counts."""
    piece_dir = join(work, "tokens", f"block-{block_id:05d}")
    names = [n for n in list_names(piece_dir) if n.endswith(".arrow")]
    if not names:
        return {"block": block_id, "rows_per_bin": {}, "instances": 0}
    fs, _ = filesystem(piece_dir)
    table = pa.concat_tables(
        _read_scratch(fs, filesystem(join(piece_dir, n))[1]) for n in names)
    order = np.argsort(table.column("doc_key").to_numpy(), kind="stable")
    table = table.take(pa.array(order))
    ids = table.column("ids").combine_chunks().values.to_numpy()
    lengths_col = table.column("sentence_lengths").combine_chunks()
    sentence_lengths = lengths_col.values.to_numpy()
    per_doc = np.diff(lengths_col.offsets.to_numpy())
    word_starts = table.column("word_starts").combine_chunks().values.to_numpy() \
        if "word_starts" in table.column_names else None
    num_documents = len(table)
    del table, lengths_col
    instances = create_block_instances_flat(ids, sentence_lengths, per_doc, cfg, vocab,
                                            cfg.random_seed, block_id, word_starts)
    num_tokens = instances.column("num_tokens").to_numpy()
    bins = length_bin(num_tokens.astype(np.int64), cfg.bin_size)
    order = np.argsort(bins, kind="stable")
    instances, bins = instances.take(pa.array(order)), bins[order]
    rows_per_bin = {}
    fs_out, _ = filesystem(work)
    for b in np.unique(bins):
        lo, hi = np.searchsorted(bins, b), np.searchsorted(bins, b, side="right")
        path = join(work, "instances", f"bin-{int(b):04d}", f"block-{block_id:05d}.arrow")
        ensure_parent(path)
        with fs_out.open_output_stream(filesystem(path)[1]) as sink, \
                pa.ipc.new_file(sink, instances.schema) as writer:
            writer.write_table(instances.slice(lo, hi - lo))
        rows_per_bin[int(b)] = int(hi - lo)
    labels = instances.column("next_sentence_label").to_numpy()
    masked = pc.list_value_length(instances.column("masked_lm_ids")).to_numpy()
    return {"block": block_id, "rows_per_bin": rows_per_bin, "instances": len(instances),
            "documents": num_documents, "tokens": int(num_tokens.sum()),
            "masked_tokens": int(masked.sum()), "random_next": int(labels.sum())}


@dataclass
class Slice:
    bin: int
    block: int
    start: int
    length: int


def plan_shards(rows: dict[int, dict[int, int]], num_shards: int) -> list[list[Slice]]:
    """Which rows of which (bin, block) file go to each shard.

    `rows[bin][block]` counts instances. Rows are numbered bin by bin (blocks in order) and
    row i goes to shard i % num_shards, so shards differ by at most one row overall and in
    every bin; each shard takes a contiguous range of each bin, read from few files.
    """
    plan: list[list[Slice]] = [[] for _ in range(num_shards)]
    offset = 0
    for b in sorted(rows):
        blocks = sorted(rows[b].items())
        total = sum(n for _, n in blocks)
        # rows of this bin going to shard s: count of i in [offset, offset+total), i%S == s
        counts = [(total - ((s - offset) % num_shards) + num_shards - 1) // num_shards
                  for s in range(num_shards)]
        cursor = 0  # position within the bin's concatenated blocks
        for s in range(num_shards):
            want, pos = counts[s], 0
            start = cursor
            for blk, n in blocks:
                if want == 0:
                    break
                if start >= pos + n:
                    pos += n
                    continue
                take = min(n - (start - pos), want)
                plan[s].append(Slice(b, blk, start - pos, take))
                want -= take
                start += take
                pos += n
            cursor += counts[s]
        offset += total
    return plan


def write_shard(index: int, slices: list[Slice], vocab_size: int, work: str, out: str,
                word_starts: bool = False) -> dict:
    """Pass 3 for one shard: write it to a temp file, hash it, publish it atomically.
    `word_starts`: the instances carry that column (dynamic whole-word masking)."""
    schema = instance_schema(vocab_size, word_starts)
    fs, _ = filesystem(work)
    rows_per_bin: Counter = Counter()
    tokens = 0
    fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix=f".shard-{index:05d}-")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            cache: dict[tuple[int, int], pa.Table] = {}
            for sl in slices:
                key = (sl.bin, sl.block)
                if key not in cache:
                    cache.clear()  # slices come in (bin, block) order: keep one file at a time
                    path = join(work, "instances", f"bin-{sl.bin:04d}",
                                f"block-{sl.block:05d}.arrow")
                    cache[key] = _read_scratch(fs, filesystem(path)[1]).cast(schema)
                part = cache[key].slice(sl.start, sl.length)
                writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
                rows_per_bin[sl.bin] += sl.length
                tokens += int(pc.sum(part.column("num_tokens")).as_py() or 0)
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        name = f"shard-{index:05d}.parquet"
        size = os.path.getsize(tmp)
        upload_atomic(tmp, join(out, name))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"file": name, "rows": sum(rows_per_bin.values()), "sha256": digest.hexdigest(),
            "rows_per_bin": {str(k): v for k, v in sorted(rows_per_bin.items())},
            "tokens": tokens, "size": size}


def merge_bins(block_results: list[dict]) -> dict[int, dict[int, int]]:
    rows: dict[int, dict[int, int]] = defaultdict(dict)
    for r in block_results:
        for b, n in r["rows_per_bin"].items():
            rows[int(b)][r["block"]] = n
    return dict(rows)
