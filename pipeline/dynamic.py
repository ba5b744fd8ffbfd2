"""Dynamic masking: the loader masks unmasked instances (`prepare --masking dynamic`) per epoch.

The procedure is Google's, the same code as static masking (`pipeline.masking.mask_batch`:
candidates, 15% of the instance's length rounded, the cap, whole-word groups, 80/10/10); only
the random numbers differ. Static masking draws them from one sequential stream; here every
instance has its own key, a hash of (seed, epoch, global instance index), and each number it
needs is a hash of that key and a counter (the position, and which draw), splitmix64 in
numpy. So an instance's masks depend on nothing but its key and its tokens: not on which
other rows are masked with it, in what order, by which worker or after how many restarts.
A resumed run sees exactly the masks it would have seen, every worker count the same ones,
and each epoch new ones.

The global index of row r of shard s is the rows of the shards before s (manifest order,
held-out ones included) plus r. Pure numpy; never reads files (the caller hands it a
shard's columns), never batches.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline.dataset import Dataset, ShardData
from pipeline.masking import mask_batch
from pipeline.tokenizer import VocabInfo, load_vocab

_GOLDEN = 0x9E3779B97F4A7C15     # splitmix64's increment: 2^64 / golden ratio
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic): a bijective hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def instance_keys(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """uint64 key per instance: a hash of (seed, epoch, global index)."""
    base = _mix(np.array([seed & _MASK64], dtype=np.uint64))
    base = _mix(base + np.uint64((epoch * _GOLDEN) & _MASK64))
    return _mix(np.asarray(index, dtype=np.uint64) * np.uint64(_GOLDEN) + base)


def uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Float64 in [0, 1) for each (key, counter) pair (broadcast): the counter-th number of
    the key's splitmix64 stream, top 53 bits."""
    x = _mix(keys + counters.astype(np.uint64) * np.uint64(_GOLDEN))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class CounterDraws:
    """The draws `mask_batch` asks for, from per-instance keys: position c of an instance
    uses counter 3c + 1 for its group order, 3c + 2 for [MASK]/kept/random, 3c + 3 for the
    random token."""

    def __init__(self, keys: np.ndarray):
        self.row_keys = keys                     # (rows,) uint64, one per instance

    def keys(self, r0: int, r1: int, width: int) -> np.ndarray:
        col = np.arange(width, dtype=np.uint64) * np.uint64(3) + np.uint64(1)
        return uniforms(self.row_keys[r0:r1, None], col[None, :])       # (rows, width)

    def replacements(self, rows: np.ndarray, cols: np.ndarray, num_random: int):
        keys = self.row_keys[rows]
        c = np.asarray(cols, dtype=np.uint64) * np.uint64(3)
        u = uniforms(keys, c + np.uint64(2))
        pick = (uniforms(keys, c + np.uint64(3)) * num_random).astype(np.int64)
        return u, np.minimum(pick, num_random - 1)


@dataclass(frozen=True)
class MaskingSpec:
    """The masking parameters a dynamic dataset's manifest records."""
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    do_whole_word_mask: bool = False
    seed: int = 12345
    word_starts: bool = False
    """The shards carry a `word_starts` column (whole-word groups from pass 1)"""

    @classmethod
    def from_manifest(cls, masking: dict) -> MaskingSpec | None:
        """The spec of a manifest's `masking` entry; None for static masking."""
        if masking.get("mode", "static") != "dynamic":
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in masking.items() if k in known})

    def to_manifest(self) -> dict:
        return {"mode": "dynamic", **dataclasses.asdict(self)}


def mask_instances(tokens: np.ndarray, offsets: np.ndarray, index: np.ndarray, epoch: int,
                   spec: MaskingSpec, vocab: VocabInfo, word_starts: np.ndarray | None = None):
    """Mask instances (flat tokens + row offsets) whose global indices are `index`, for
    `epoch`: the same four arrays as `mask_batch`."""
    draws = CounterDraws(instance_keys(spec.seed, epoch, index))
    return mask_batch(tokens, offsets, draws, spec, vocab, word_starts)


class Masker:
    """Masks a dynamic dataset's instances for an epoch: a batch's rows, or whole shards."""

    def __init__(self, spec: MaskingSpec, vocab: VocabInfo, first_index: dict[int, int]):
        self.spec, self.vocab, self.first_index = spec, vocab, first_index

    def apply(self, shard: ShardData, epoch: int) -> ShardData:
        """The shard with its masks for `epoch`: input_ids masked, predictions filled in."""
        index = self.first_index[shard.index] + np.arange(shard.rows, dtype=np.int64)
        masked, positions, original, pred_offsets = mask_instances(
            shard.ids, shard.ids_offsets, index, epoch, self.spec, self.vocab,
            shard.word_starts)
        return dataclasses.replace(shard, ids=masked, mlm_pos=positions.astype(np.uint16),
                                   mlm_ids=original, mlm_offsets=pred_offsets)


    def take(self, shard: ShardData, rows: np.ndarray, epoch: int) -> ShardData:
        """Rows `rows` of a shard, in that order, as a ShardData of their own (same shard
        index), masked for `epoch`: the same masks `apply` gives those instances."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = shard.ids_offsets[rows + 1] - shard.ids_offsets[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # flat positions of the rows' tokens in the shard, row after row
        at = np.repeat(shard.ids_offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        starts = None if shard.word_starts is None else shard.word_starts[at]
        masked, positions, original, pred_offsets = mask_instances(
            shard.ids[at], offsets, self.first_index[shard.index] + rows, epoch, self.spec,
            self.vocab, starts)
        return ShardData(shard.index, masked, offsets, positions.astype(np.uint16), original,
                         pred_offsets, shard.segment_b_start[rows], shard.nsp_label[rows],
                         shard.num_tokens[rows], starts)


def masker_for(ds: Dataset) -> Masker | None:
    """The masker of a dynamic dataset (reads its vocab), None for static masks."""
    spec = MaskingSpec.from_manifest(ds.manifest.masking)
    if spec is None:
        return None
    vocab = VocabInfo.from_vocab(load_vocab(ds.vocab_file))
    first = np.concatenate([[0], np.cumsum([s.rows for s in ds.shards])])
    return Masker(spec, vocab, {s.index: int(first[i]) for i, s in enumerate(ds.shards)})
