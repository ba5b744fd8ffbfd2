"""Pretraining batches from `prepare`'s shards: one rank's share, one length bin per batch.

What a rank sees is a pure function of (manifest, seed, rank, world size, position), where
the position is the global micro-batch index, the same on every rank. The whole order is
planned from `manifest.json` alone (rows per shard and per length bin), so resuming at
micro-batch k reads only the shard needed for k, never the data before it.

The plan, epoch by epoch:
- The training shards are permuted (seeded by the epoch) and dealt out in *rounds* of W
  (world size): in round q, rank r holds shard `perm[q*W + r]` in memory. An epoch has
  `N // W` rounds; with N not a multiple of W the remaining shards sit out that epoch (a
  different few each epoch), so no rank ever reads the same shard as another in one round.
- In a round, bin k yields `min over ranks of rows_in_bin // B` micro-batches on every rank,
  and the round's bin sequence is shuffled with a seed all ranks share: at every step all
  ranks draw from the same length bin, so no rank waits on a longer one, and every rank runs
  the same number of steps. Rows a bin cannot fill a batch with are skipped this round.
- Within a (shard, bin) the rows are permuted per epoch; a batch is B consecutive rows of
  that permutation, padded to its own longest row (not to max_seq_length).
A batch's `sample_ids` (shard << 32 | row) say exactly which instances it holds.

Held-out shards (`split_holdout`) form the evaluation set: a fixed seeded sample, sorted by
length, cut into batches dealt round-robin so every rank runs the same number of forward
passes (ZeRO-3 gathers parameters collectively, so ranks must stay in step).

Pure pyarrow / numpy / torch. Never imports Ray, DeepSpeed or MLflow, never trains.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.errors import InputError
from pipeline.schema import COLUMNS, SCHEMA_VERSION, length_bin
from pipeline.storage import exists, filesystem, join, read_text

IGNORE_INDEX = -100  # masked_lm_ids padding: no prediction at this slot (as in HF)


# --------------------------------------------------------------------------- manifest

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
    manifest: dict
    shards: list[ShardMeta]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab"]["size"])

    @property
    def max_seq_length(self) -> int:
        return int(self.manifest["max_seq_length"])

    @property
    def bin_size(self) -> int:
        return int(self.manifest.get("bin_size", 0))

    @property
    def nsp(self) -> bool:
        return bool(self.manifest.get("nsp", self.manifest.get("config", {}).get("nsp", True)))

    @property
    def vocab_file(self) -> str:
        return join(self.path, self.manifest["vocab"].get("file", "vocab.txt"))


def open_dataset(path: str) -> Dataset:
    """Read `manifest.json` of a `prepare` output (local or s3://); a one-line error if unfit."""
    path = str(path).rstrip("/") if "://" in str(path) else str(path)
    manifest_path = join(path, "manifest.json")
    try:
        found = exists(manifest_path)
    except OSError as e:
        raise InputError(f"--data {path}: cannot read it ({str(e).splitlines()[0]})")
    if not found:
        raise InputError(f"--data {path}: no manifest.json there; pass the output directory of "
                         "`bertpipe prepare` (an output without a manifest is incomplete)")
    try:
        manifest = json.loads(read_text(manifest_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{manifest_path} is not valid JSON ({e})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{manifest_path}: schema_version {version!r}, this version reads "
                         f"{SCHEMA_VERSION}; re-run `bertpipe prepare`")
    for key in ("vocab", "max_seq_length", "shards"):
        if key not in manifest:
            raise InputError(f"{manifest_path}: missing key '{key}'; re-run `bertpipe prepare`")
    shards = [ShardMeta(i, s["file"], int(s["rows"]),
                        tuple(sorted((int(b), int(n)) for b, n in s["rows_per_bin"].items())))
              for i, s in enumerate(manifest["shards"])]
    if not shards or sum(s.rows for s in shards) == 0:
        raise InputError(f"{manifest_path}: the dataset holds no instances")
    return Dataset(path, manifest, shards)


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


# --------------------------------------------------------------------------- reading

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
    try:
        table = pq.read_table(inner, filesystem=fs, columns=list(COLUMNS))
    except (OSError, FileNotFoundError) as e:
        raise InputError(f"shard {path}: cannot read it ({str(e).splitlines()[0]})")
    except Exception as e:  # pyarrow raises ArrowInvalid for a damaged or foreign file
        raise InputError(f"shard {path}: not a readable shard ({str(e).splitlines()[0]})")
    ids, ids_off = _list_column(table, "input_ids")
    pos, mlm_off = _list_column(table, "masked_lm_positions")
    mids, mids_off = _list_column(table, "masked_lm_ids")
    if not np.array_equal(mlm_off, mids_off):
        raise InputError(f"shard {path}: masked_lm_positions and masked_lm_ids differ in length")
    data = ShardData(meta.index, ids, ids_off, pos, mids, mlm_off,
                     table.column("segment_b_start").to_numpy().astype(np.int64),
                     table.column("next_sentence_label").to_numpy().astype(np.int64),
                     table.column("num_tokens").to_numpy().astype(np.int64))
    if data.rows != meta.rows:
        raise InputError(f"shard {path}: {data.rows} rows but the manifest says {meta.rows}; "
                         "the data directory is inconsistent, re-run `bertpipe prepare`")
    bins = length_bin(data.num_tokens, ds.bin_size if bin_size is None else bin_size)
    expected = np.repeat([b for b, _ in meta.rows_per_bin], [n for _, n in meta.rows_per_bin])
    if not np.array_equal(bins, expected):
        raise InputError(f"shard {path}: its rows are not in the length bins the manifest "
                         "records; re-run `bertpipe prepare`")
    return data


# --------------------------------------------------------------------------- batches

@dataclass
class Batch:
    """One padded micro-batch. Tensors are int64; T = the batch's longest row (rounded up to
    `pad_to_multiple_of`), P = its most predictions."""
    input_ids: torch.Tensor            # (B, T), [PAD] = 0 after each row
    attention_mask: torch.Tensor       # (B, T), 1 on real tokens
    token_type_ids: torch.Tensor       # (B, T), 1 from segment_b_start to the row's end
    masked_lm_positions: torch.Tensor  # (B, P), padded with 0
    masked_lm_ids: torch.Tensor        # (B, P), padded with -100
    next_sentence_label: torch.Tensor | None  # (B,), None without NSP
    sample_ids: np.ndarray             # (B,) shard << 32 | row
    num_tokens: int                    # real tokens in the batch (throughput counters)

    def model_inputs(self, device: torch.device | str | None = None) -> dict:
        names = ("input_ids", "attention_mask", "token_type_ids", "masked_lm_positions",
                 "masked_lm_ids", "next_sentence_label")
        out = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out

    def __len__(self) -> int:
        return len(self.sample_ids)


def _gather_padded(values, offsets, rows, lengths, width, fill) -> np.ndarray:
    """(B, width) array of the list entries of `rows`, right-padded with `fill`."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    total = int(lengths.sum())
    if total:
        row_of = np.repeat(np.arange(len(rows)), lengths)
        # position inside its row of every gathered element
        pos = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row_of, pos] = values[np.repeat(offsets[rows], lengths) + pos]
    return out


def collate(shard: ShardData, rows: np.ndarray, nsp: bool = True,
            pad_to_multiple_of: int = 1) -> Batch:
    """The rows `rows` of a shard as one Batch padded to its longest row."""
    rows = np.asarray(rows, dtype=np.int64)
    n = shard.num_tokens[rows]                                   # (B,)
    width = int(n.max())
    if pad_to_multiple_of > 1:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = _gather_padded(shard.ids, shard.ids_offsets, rows, n, width, 0)
    cols = np.arange(width)[None, :]                              # (1, T)
    mask = cols < n[:, None]
    types = (cols >= shard.segment_b_start[rows][:, None]) & mask
    p = shard.mlm_offsets[rows + 1] - shard.mlm_offsets[rows]    # (B,) predictions per row
    width_p = max(int(p.max()), 1)
    positions = _gather_padded(shard.mlm_pos, shard.mlm_offsets, rows, p, width_p, 0)
    targets = _gather_padded(shard.mlm_ids, shard.mlm_offsets, rows, p, width_p, IGNORE_INDEX)
    return Batch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        token_type_ids=torch.from_numpy(types.astype(np.int64)),
        masked_lm_positions=torch.from_numpy(positions),
        masked_lm_ids=torch.from_numpy(targets),
        next_sentence_label=torch.from_numpy(shard.nsp_label[rows].copy()) if nsp else None,
        sample_ids=(np.int64(shard.index) << 32) | rows,
        num_tokens=int(n.sum()))


# --------------------------------------------------------------------------- the plan

@dataclass
class Round:
    """Round q of epoch e: which shard each rank holds and the shared bin of every batch."""
    epoch: int
    index: int
    shards: list[ShardMeta]          # one per rank
    bins: np.ndarray                 # (num_batches,) bin of each micro-batch, shuffled

    def __len__(self) -> int:
        return len(self.bins)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


@dataclass
class PretrainLoader:
    """Rank `rank`'s micro-batches, an endless stream over epochs, positioned by index."""
    dataset: Dataset
    shards: list[ShardMeta]
    """The training shards (held-out ones removed)"""
    micro_batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    pad_to_multiple_of: int = 1
    prefetch: bool = True
    """Read the next round's shard in a background thread while this one is consumed"""
    _perms: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.micro_batch_size < 1:
            raise InputError("micro_batch_size must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if len(self.shards) < self.world_size:
            raise InputError(f"{len(self.shards)} training shards for {self.world_size} workers: "
                             "every worker needs its own shard; prepare with --num-shards of at "
                             "least (workers + eval_shards), ideally a multiple of the workers")
        if self.batches_per_epoch(0) == 0:
            raise InputError(f"micro-batch size {self.micro_batch_size} is larger than every "
                             "length bin of the shards, so no batch can be formed; use a smaller "
                             "batch, fewer shards, or a larger --bin-size when preparing")

    # -- planning (metadata only) --
    @property
    def rounds_per_epoch(self) -> int:
        return len(self.shards) // self.world_size

    def _shard_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = _rng(self.seed, 1, epoch).permutation(len(self.shards))
        return self._perms[epoch]

    def round(self, epoch: int, q: int) -> Round:
        order = self._shard_order(epoch)
        W, B = self.world_size, self.micro_batch_size
        held = [self.shards[i] for i in order[q * W:(q + 1) * W]]
        per_rank = [dict(s.rows_per_bin) for s in held]
        bins = sorted(set().union(*per_rank))
        counts = [min(rows.get(b, 0) for rows in per_rank) // B for b in bins]
        seq = np.repeat(np.asarray(bins, dtype=np.int64), counts)
        return Round(epoch, q, held, _rng(self.seed, 2, epoch, q).permutation(seq))

    def batches_per_epoch(self, epoch: int) -> int:
        return sum(len(self.round(epoch, q)) for q in range(self.rounds_per_epoch))

    def locate(self, position: int) -> tuple[int, int, int]:
        """(epoch, round, offset in round) of global micro-batch `position` (metadata only)."""
        epoch, q, left = 0, 0, position
        while True:
            n = len(self.round(epoch, q))
            if left < n:
                return epoch, q, left
            left -= n
            q += 1
            if q == self.rounds_per_epoch:
                epoch, q = epoch + 1, 0

    def _rows_of(self, rnd: Round) -> dict[int, np.ndarray]:
        """This rank's rows of its round shard per bin, in the epoch's permuted order."""
        meta = rnd.shards[self.rank]
        rng = _rng(self.seed, 3, rnd.epoch, meta.index)
        return {b: start + rng.permutation(n) for b, (start, n) in meta.bin_starts().items()}

    # -- iteration --
    def _rounds(self, epoch: int, q: int) -> Iterator[Round]:
        """Rounds from (epoch, q) on, skipping any that form no batch."""
        empty = 0
        while True:
            rnd = self.round(epoch, q)
            if len(rnd):
                empty = 0
                yield rnd
            else:
                empty += 1
                if empty > 2 * self.rounds_per_epoch:
                    raise InputError("the shards no longer form any batch of "
                                     f"{self.micro_batch_size} rows; use a smaller batch")
            q += 1
            if q == self.rounds_per_epoch:
                epoch, q = epoch + 1, 0

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Micro-batches from global position `start` on, forever (the caller stops)."""
        epoch, q, offset = self.locate(start)
        rounds = self._rounds(epoch, q)
        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None

        def read(r: Round):
            """A callable giving r's shard: read in the background with prefetch, else on call."""
            if pool is not None:
                return pool.submit(read_shard, self.dataset, r.shards[self.rank]).result
            return lambda: read_shard(self.dataset, r.shards[self.rank])

        rnd = next(rounds)
        current = read(rnd)
        try:
            while True:
                nxt = next(rounds)
                upcoming = read(nxt)  # starts now with prefetch, while this round is consumed
                shard = current()
                rows = self._rows_of(rnd)
                used = dict.fromkeys(rows, 0)
                for b in rnd.bins[:offset]:          # batches consumed before `start`
                    used[int(b)] += 1
                for b in rnd.bins[offset:]:
                    b = int(b)
                    k = used[b] * self.micro_batch_size
                    used[b] += 1
                    yield collate(shard, rows[b][k:k + self.micro_batch_size], self.dataset.nsp,
                                  self.pad_to_multiple_of)
                rnd, current, offset = nxt, upcoming, 0
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- evaluation

def eval_batches(ds: Dataset, shards: list[ShardMeta], batch_size: int, rank: int,
                 world_size: int, max_samples: int, seed: int = 0,
                 pad_to_multiple_of: int = 1) -> list[Batch]:
    """This rank's share of a fixed evaluation sample of the held-out shards.

    The same on every call; every rank gets the same number of batches (the sample is cut
    to a multiple of world_size batches). Empty if the held-out rows are too few.
    """
    if not shards:
        return []
    total = sum(s.rows for s in shards)
    take = min(max_samples, total)
    chosen = np.sort(_rng(seed, 4).choice(total, size=take, replace=False))
    # global index -> (shard, row); rows inside a shard ascend by bin, hence by length
    starts = np.cumsum([0] + [s.rows for s in shards])
    which = np.searchsorted(starts, chosen, side="right") - 1
    local = chosen - starts[which]
    data = {shards[i].index: read_shard(ds, shards[i]) for i in np.unique(which)}
    keys = np.array([data[shards[i].index].num_tokens[r] for i, r in zip(which, local)])
    order = np.argsort(keys, kind="stable")                     # by length: little padding
    which, local = which[order], local[order]
    num_batches = (take // batch_size) // world_size * world_size
    out = []
    for j in range(rank, num_batches, world_size):
        sel = slice(j * batch_size, (j + 1) * batch_size)
        # a batch may straddle shards: collate per shard, then concatenate padded parts
        parts = [collate(data[shards[i].index], local[sel][which[sel] == i], ds.nsp,
                         pad_to_multiple_of) for i in np.unique(which[sel])]
        out.append(parts[0] if len(parts) == 1 else _concat(parts))
    return out


def _concat(parts: list[Batch]) -> Batch:
    def cat(name, fill):
        tensors = [getattr(p, name) for p in parts]
        if tensors[0] is None:
            return None
        if tensors[0].dim() == 1:
            return torch.cat(tensors)
        width = max(t.shape[1] for t in tensors)
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)
                          for t in tensors])
    return Batch(cat("input_ids", 0), cat("attention_mask", 0), cat("token_type_ids", 0),
                 cat("masked_lm_positions", 0), cat("masked_lm_ids", IGNORE_INDEX),
                 cat("next_sentence_label", 0), np.concatenate([p.sample_ids for p in parts]),
                 sum(p.num_tokens for p in parts))


__all__ = ["Dataset", "ShardMeta", "ShardData", "Batch", "Round", "PretrainLoader",
           "open_dataset", "check_fits", "split_holdout", "read_shard", "collate",
           "eval_batches", "IGNORE_INDEX"]
