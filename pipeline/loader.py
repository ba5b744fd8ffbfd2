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

With `packing`, the length bins give way to the whole shard: a batch is B consecutive rows
of the shard's per-epoch permutation, whatever their lengths, and `collate_packed` lays its
B instances into as few rows of `max_seq_length` as `pipeline.packing` finds. The plan (which
instances form each batch, the number of batches, the data position) is as metadata-only as
with bins, and a batch's layout is a pure function of its rows, so a resumed run sees
exactly the packed batches it would have. Which pads less depends on the micro-batch: on the
Wikipedia shards (one epoch, README "Performance") bins pad 10-13%; packing pads more at
B = 8 (16% at seq 128, 20% at 512: few instances to combine) and less from B = 32 at 512
(8.4%) and B = 128 at both lengths (9.6% at 128, 2.9% at 512). Packing inside a length bin
was measured too and is never the best of the three, so it is not offered.

Batches take their form in one place, `make_batch` (rows of a shard -> instances -> packed
or padded batch). For a dynamic dataset (`prepare --masking dynamic`) that is where the
instances get their masks, for the batch's epoch (`pipeline.dynamic`): masks are a function
of (seed, epoch, instance), so a resumed run sees the same ones and each epoch new ones;
held-out data gets epoch 0's. With `prefetch`, a background thread reads the next shard and another
builds the batches ahead of the training loop (pinned when they go to a GPU), so the loop
only takes finished batches and their host-side counts.

Held-out shards (`split_holdout`) form the evaluation set: a fixed seeded sample, sorted by
length, cut into batches dealt round-robin so every rank runs the same number of forward
passes (ZeRO-3 gathers parameters collectively, so ranks must stay in step).

Pure pyarrow / numpy / torch. Never imports Ray, DeepSpeed or MLflow, never trains.
"""
from __future__ import annotations

import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import numpy as np

from pipeline.batch import Batch, collate, collate_packed, concat
from pipeline.dataset import Dataset, ShardData, ShardMeta, read_shard
from pipeline.dynamic import Masker, masker_for
from pipeline.errors import InputError
from pipeline.packing import padded_slots, padding_fraction


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
    """Read the next round's shard and build the batches ahead in background threads"""
    packing: bool = False
    """Pack several instances per row (batches drawn from the whole shard, not one bin)"""
    pin_memory: bool = False
    """Pin each batch in the background thread (set it when batches go to a GPU)"""
    prefetch_batches: int = 4
    """Batches built ahead of the training loop (with prefetch)"""
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

    def _groups(self, meta: ShardMeta) -> dict[int, tuple[int, int]]:
        """group -> (first row, row count): the length bins, or with packing the whole shard."""
        return {0: (0, meta.rows)} if self.packing else meta.bin_starts()

    def round(self, epoch: int, q: int) -> Round:
        order = self._shard_order(epoch)
        W, B = self.world_size, self.micro_batch_size
        held = [self.shards[i] for i in order[q * W:(q + 1) * W]]
        per_rank = [{b: n for b, (_, n) in self._groups(s).items()} for s in held]
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
        return {b: start + rng.permutation(n) for b, (start, n) in self._groups(meta).items()}

    @cached_property
    def masker(self) -> Masker | None:
        """Masks a dynamic dataset's instances (None: the shards hold their masks)."""
        return masker_for(self.dataset)

    def make_batch(self, shard: ShardData, rows: np.ndarray, epoch: int = 0) -> Batch:
        """Rows of a shard -> instances -> one packed or padded batch: where every planned
        batch takes its form. Dynamic data is masked here, for `epoch`, before collation."""
        rows = np.asarray(rows, dtype=np.int64)
        taken, picked = shard, rows
        if self.masker is not None:   # just these instances, masked: rows 0..B-1 of `taken`
            taken, picked = self.masker.take(shard, rows, epoch), np.arange(len(rows))
        if self.packing:
            batch = collate_packed(taken, picked, self.dataset.max_seq_length,
                                   self.dataset.nsp, self.pad_to_multiple_of)
        else:
            batch = collate(taken, picked, self.dataset.nsp, self.pad_to_multiple_of)
        batch.sample_ids = (np.int64(shard.index) << 32) | rows   # ids in the shard
        return batch

    def padding(self, epoch: int = 0, rounds: int | None = 1) -> dict:
        """Padding fractions of this rank's batches in the first `rounds` rounds of `epoch`
        (None: the whole epoch), read from its shards: as this loader lays them out, and the
        same batches one instance per row."""
        real = slots = unpacked = 0
        for q in range(self.rounds_per_epoch if rounds is None else rounds):
            rnd = self.round(epoch, q)
            shard = read_shard(self.dataset, rnd.shards[self.rank])
            rows, used = self._rows_of(rnd), {}
            for b in rnd.bins:
                b = int(b)
                k = used.get(b, 0)
                used[b] = k + 1
                batch = self.make_batch(shard, rows[b][k * self.micro_batch_size:
                                                       (k + 1) * self.micro_batch_size], epoch)
                real += batch.num_tokens
                slots += batch.input_ids.numel()
                unpacked += padded_slots(batch.seq_lens, self.pad_to_multiple_of)
        return {"padding_fraction": padding_fraction(real, slots),
                "padding_fraction_unpacked": padding_fraction(real, unpacked)}

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
        """Micro-batches from global position `start` on, forever (the caller stops); built
        in a background thread with `prefetch`."""
        batches = self._batches(start)
        if self.prefetch:
            return Prefetcher(batches, self.prefetch_batches, self.pin_memory)
        return (b.pin() for b in batches) if self.pin_memory else batches

    def _batches(self, start: int) -> Iterator[Batch]:
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
                    yield self.make_batch(shard, rows[b][k:k + self.micro_batch_size],
                                          rnd.epoch)
                rnd, current, offset = nxt, upcoming, 0
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


class Prefetcher:
    """Runs a batch generator in a background thread, `depth` batches ahead (pinned if asked).

    An error in the thread is raised by the `next` that would have returned its batch. The
    thread stops when the consumer calls `close()` or drops the iterator."""

    def __init__(self, batches: Iterator[Batch], depth: int, pin: bool):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(batches, pin, self._queue,
                                                                    self._stop),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()
        weakref.finalize(self, self._stop.set)  # the consumer dropped us: let the thread go

    @staticmethod
    def _produce(batches, pin, out: queue.Queue, stop: threading.Event) -> None:
        # a static method: the thread must not hold the Prefetcher alive
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False
        try:
            for b in batches:
                if not put(b.pin() if pin else b):
                    break
        except BaseException as e:  # noqa: B036 - handed to the consumer, raised there
            put(e)
        finally:
            batches.close()

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()


def eval_batches(ds: Dataset, shards: list[ShardMeta], batch_size: int, rank: int,
                 world_size: int, max_samples: int, seed: int = 0,
                 pad_to_multiple_of: int = 1, packing: bool = False) -> list[Batch]:
    """This rank's share of a fixed evaluation sample of the held-out shards.

    The same on every call; every rank gets the same number of batches (the sample is cut
    to a multiple of world_size batches). Empty if the held-out rows are too few. With
    `packing` each batch holds the same instances, packed (so the metrics are the same).
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
    masker = masker_for(ds)
    if masker is not None:  # the held-out sample is evaluated with fixed masks: epoch 0's
        data = {k: masker.apply(v, 0) for k, v in data.items()}
    keys = np.array([data[shards[i].index].num_tokens[r] for i, r in zip(which, local)])
    order = np.argsort(keys, kind="stable")                     # by length: little padding
    which, local = which[order], local[order]
    num_batches = (take // batch_size) // world_size * world_size
    out = []
    for j in range(rank, num_batches, world_size):
        sel = slice(j * batch_size, (j + 1) * batch_size)
        # a batch may straddle shards: collate per shard, then concatenate padded parts
        parts = [collate_packed(data[shards[i].index], local[sel][which[sel] == i],
                                ds.max_seq_length, ds.nsp, pad_to_multiple_of) if packing
                 else collate(data[shards[i].index], local[sel][which[sel] == i], ds.nsp,
                              pad_to_multiple_of) for i in np.unique(which[sel])]
        out.append(parts[0] if len(parts) == 1 else concat(parts))
    return out
