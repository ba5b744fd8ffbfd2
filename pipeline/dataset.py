"""A `prepare` output as the training side sees it: manifest, shard metadata, shard columns.

`open_dataset` reads and checks `manifest.json` (typed: `pipeline.manifest.Manifest`);
`verify_files` checks every shard and the vocab against the manifest's sizes and sha256
(before any worker starts: a damaged, truncated, missing or foreign file is one line, not a
traceback from a worker); `check_fits` refuses data a model cannot take; `split_holdout`
sets evaluation shards aside; `read_shard` reads one shard's columns as flat numpy arrays and
checks them against the manifest (rows, length bins). Pure pyarrow / numpy. Never imports
Ray, DeepSpeed or MLflow, never batches or trains.
"""
from __future__ import annotations

import hashlib
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.manifest import Manifest
from pipeline.schema import COLUMNS, length_bin
from pipeline.storage import exists, filesystem, join, read_text

VERIFY_LEVELS = ("full", "size", "off")
HASH_CHUNK = 8 << 20
HASH_THREADS = 8  # files hashed at once: hashlib and pyarrow reads release the GIL


@dataclass(frozen=True)
class ShardMeta:
    index: int
    """Position of the shard in the manifest (stable id used in sample_ids and seeds)"""
    file: str
    rows: int
    rows_per_bin: tuple[tuple[int, int], ...]
    """(bin, rows) pairs, bins ascending, as the rows are ordered in the file"""

    def bin_starts(self) -> dict[int, tuple[int, int]]:
        """bin -> (first row, row count): each bin is one contiguous range of the file."""
        out, start = {}, 0
        for b, n in self.rows_per_bin:
            out[b] = (start, n)
            start += n
        return out


@dataclass
class Dataset:
    """A `prepare` output: where it is, its manifest, its shards."""
    path: str
    manifest: Manifest
    shards: list[ShardMeta]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest.vocab.size)

    @property
    def max_seq_length(self) -> int:
        return int(self.manifest.max_seq_length)

    @property
    def bin_size(self) -> int:
        return int(self.manifest.bin_size)

    @property
    def nsp(self) -> bool:
        return bool(self.manifest.nsp)

    @property
    def vocab_file(self) -> str:
        return join(self.path, self.manifest.vocab.file)


def open_dataset(path: str, option: str = "--data") -> Dataset:
    """Read `manifest.json` of a `prepare` output (local or s3://); a one-line error if unfit,
    naming the path as `option` (how the user gave it: `--data`, or inspect's `OUTPUT`)."""
    path = str(path).rstrip("/") if "://" in str(path) else str(path)
    manifest_path = join(path, "manifest.json")
    try:
        found = exists(manifest_path)
    except OSError as e:
        raise InputError(f"{option} {path}: cannot read it ({str(e).splitlines()[0]})") from None
    if not found:
        raise InputError(f"{option} {path}: no manifest.json there; pass the output directory of "
                         "`bertpipe prepare` (an output without a manifest is incomplete)")
    try:
        text = read_text(manifest_path)
    except UnicodeDecodeError as e:
        raise InputError(f"{manifest_path} is not valid JSON ({e})") from None
    manifest = Manifest.from_json(text, manifest_path)
    shards = [ShardMeta(i, s.file, int(s.rows),
                        tuple(sorted((int(b), int(n)) for b, n in s.rows_per_bin.items())))
              for i, s in enumerate(manifest.shards)]
    if not shards or sum(s.rows for s in shards) == 0:
        raise InputError(f"{manifest_path}: the dataset holds no instances")
    return Dataset(path, manifest, shards)


def _sizes(ds: Dataset, names: list[str]) -> dict[str, int]:
    """name -> bytes of the files among `names` that exist: one listing per folder (an object
    store answers a listing with every size at once)."""
    import pyarrow.fs as pafs
    fs, root = filesystem(ds.path)
    sizes = {}
    for folder in sorted({posixpath.dirname(n) for n in names}):
        inner = posixpath.join(root, folder) if folder else root
        for info in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                name = posixpath.basename(info.path)
                sizes[posixpath.join(folder, name) if folder else name] = info.size
    return sizes


def _sha256(ds: Dataset, name: str) -> str:
    fs, inner = filesystem(join(ds.path, name))
    digest = hashlib.sha256()
    with fs.open_input_stream(inner) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _diagnose(ds: Dataset, name: str, rows: int | None) -> str:
    """Why a file whose bytes differ from the manifest's is wrong, read from its footer."""
    if rows is None:
        return "its sha256 differs from the manifest's (changed or damaged)"
    fs, inner = filesystem(join(ds.path, name))
    try:
        meta = pq.read_metadata(inner, filesystem=fs)
    except Exception as e:  # ArrowInvalid / OSError: not Parquet any more
        return f"damaged: not readable as Parquet ({str(e).splitlines()[0][:120]})"
    if set(COLUMNS) - set(meta.schema.to_arrow_schema().names):
        return "not a shard of `bertpipe prepare` (its columns differ)"
    if meta.num_rows != rows:
        return (f"a shard of another dataset or run ({meta.num_rows} rows, the manifest "
                f"records {rows})")
    return "its bytes differ from the manifest's sha256 (damaged on disk or in a copy)"


def verify_files(ds: Dataset, level: str = "full") -> dict:
    """Refuse data whose files do not match `manifest.json`, before anything trains on it.

    size: every shard and the vocab are there with the recorded sizes (from listings);
    full: also their sha256, streamed, several files at once. One InputError line names the
    first bad file and what is wrong with it. Returns {"files", "bytes", "level"}."""
    if level not in VERIFY_LEVELS:
        raise InputError(f"verify_data must be one of {', '.join(VERIFY_LEVELS)} (got {level!r})")
    m = ds.manifest
    # (name, size or 0 when unrecorded, sha256, rows for a shard / None for the vocab)
    files = [(s.file, s.size or 0, s.sha256, s.rows) for s in m.shards]
    files.append((m.vocab.file, 0, m.vocab.sha256, None))
    if level == "off":
        return {"files": 0, "bytes": 0, "level": level}
    sizes = _sizes(ds, [f[0] for f in files])
    problems = []
    for name, size, _, rows in files:
        if name not in sizes:
            problems.append(f"{name} is missing")
        elif size and sizes[name] < size:
            problems.append(f"{name} is truncated: {sizes[name]} bytes, the manifest records "
                            f"{size}")
        elif size and sizes[name] != size:
            problems.append(f"{name}: {_diagnose(ds, name, rows)} ({sizes[name]} bytes, the "
                            f"manifest records {size})")
    if not problems and level == "full":
        todo = [f for f in files if f[2]]
        with ThreadPoolExecutor(min(HASH_THREADS, max(1, len(todo)))) as pool:
            found = list(pool.map(lambda f: _sha256(ds, f[0]), todo))
        problems = [f"{name}: {_diagnose(ds, name, rows)}"
                    for (name, _, sha, rows), got in zip(todo, found) if got != sha]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"--data {ds.path}: {problems[0]}{more}; restore the file(s) from "
                         "where they came, or re-run `bertpipe prepare`")
    return {"files": len(files), "bytes": sum(sizes.get(f[0], 0) for f in files),
            "level": level}


def check_fits(ds: Dataset, vocab_size: int, max_position_embeddings: int,
               max_seq_length: int | None = None) -> None:
    """Refuse data a model cannot take: token ids past its vocab, rows past its positions."""
    if ds.vocab_size > vocab_size:
        raise InputError(f"--data {ds.path}: its vocab has {ds.vocab_size} tokens but the model's "
                         f"embedding has {vocab_size} rows; use a model built for this vocab")
    if ds.max_seq_length > max_position_embeddings:
        raise InputError(f"--data {ds.path}: max_seq_length {ds.max_seq_length} exceeds the "
                         f"model's max_position_embeddings {max_position_embeddings}")
    if max_seq_length is not None and ds.max_seq_length != max_seq_length:
        raise InputError(f"--data {ds.path}: prepared with max_seq_length {ds.max_seq_length} but "
                         f"the config asks for {max_seq_length}; prepare the data with "
                         f"--max-seq-length {max_seq_length} or change max_seq_length")


def split_holdout(shards: list[ShardMeta], holdout: int) -> tuple[list[ShardMeta], list[ShardMeta]]:
    """(train, held out): the last `holdout` shards of the manifest are never trained on."""
    if holdout < 0 or holdout >= len(shards):
        raise InputError(f"cannot hold out {holdout} of {len(shards)} shards for evaluation; "
                         "prepare more shards (--num-shards) or lower eval_shards")
    return shards[:len(shards) - holdout], shards[len(shards) - holdout:]


@dataclass
class ShardData:
    """One shard's columns as flat numpy arrays (values + offsets for the list columns)."""
    index: int
    ids: np.ndarray            # (total_tokens,) uint16/int32
    ids_offsets: np.ndarray    # (rows + 1,)
    mlm_pos: np.ndarray        # (total_predictions,) uint16
    mlm_ids: np.ndarray        # (total_predictions,)
    mlm_offsets: np.ndarray    # (rows + 1,)
    segment_b_start: np.ndarray
    nsp_label: np.ndarray
    num_tokens: np.ndarray
    word_starts: np.ndarray | None = None
    """(total_tokens,) uint8 whole-word group starts (dynamic masking with whole words)"""

    @property
    def rows(self) -> int:
        return len(self.num_tokens)


def _list_column(table, name) -> tuple[np.ndarray, np.ndarray]:
    col = table.column(name).combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


def read_shard(ds: Dataset, meta: ShardMeta, bin_size: int | None = None) -> ShardData:
    """Read a whole shard and check it against its manifest entry (rows, bins ascending)."""
    path = join(ds.path, meta.file)
    fs, inner = filesystem(path)
    with_starts = bool(ds.manifest.masking.get("word_starts"))
    try:
        table = pq.read_table(inner, filesystem=fs,
                              columns=[*COLUMNS, *(["word_starts"] if with_starts else [])])
    except (OSError, FileNotFoundError) as e:
        raise InputError(f"shard {path}: cannot read it ({str(e).splitlines()[0]})") from None
    except Exception as e:  # pyarrow raises ArrowInvalid for a damaged or foreign file
        raise InputError(f"shard {path}: not a readable shard ({str(e).splitlines()[0]})") from None
    ids, ids_off = _list_column(table, "input_ids")
    pos, mlm_off = _list_column(table, "masked_lm_positions")
    mids, mids_off = _list_column(table, "masked_lm_ids")
    if not np.array_equal(mlm_off, mids_off):
        raise InputError(f"shard {path}: masked_lm_positions and masked_lm_ids differ in length")
    data = ShardData(meta.index, ids, ids_off, pos, mids, mlm_off,
                     table.column("segment_b_start").to_numpy().astype(np.int64),
                     table.column("next_sentence_label").to_numpy().astype(np.int64),
                     table.column("num_tokens").to_numpy().astype(np.int64),
                     _list_column(table, "word_starts")[0] if with_starts else None)
    if data.rows != meta.rows:
        raise InputError(f"shard {path}: {data.rows} rows but the manifest says {meta.rows}; "
                         "the data directory is inconsistent, re-run `bertpipe prepare`")
    bins = length_bin(data.num_tokens, ds.bin_size if bin_size is None else bin_size)
    expected = np.repeat([b for b, _ in meta.rows_per_bin], [n for _, n in meta.rows_per_bin])
    if not np.array_equal(bins, expected):
        raise InputError(f"shard {path}: its rows are not in the length bins the manifest "
                         "records; re-run `bertpipe prepare`")
    return data
