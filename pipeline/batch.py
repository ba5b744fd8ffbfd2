"""One micro-batch of pretraining instances, and how shard rows become one.

Two layouts of the same instances (rows of a shard, `pipeline.dataset.ShardData`):
- `collate`: one instance per row, padded to the batch's longest;
- `collate_packed`: several instances per row (grouped by `pipeline.packing.pack_rows`),
  marked as `model.packing` expects: `position_ids` restarting at 0 at each instance,
  `cls_positions` / `next_sentence_label` (R, S) per instance, MLM positions indexing the
  row, and `cu_seqlens` / `max_seqlen` of the row's segments computed here on the host, so
  the GPU never has to find them.
Both give int64 tensors, the MLM targets as sparse (position, id) pairs padded with
IGNORE_INDEX, and the counts a training step needs (real tokens, predictions, instance
lengths) as host numbers, so the step reads nothing back from the device. Pure numpy /
torch; never reads files, never imports pyarrow (the GPU benchmark uses `Batch`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.packing import pack_rows, padded_slots, padding_fraction

if TYPE_CHECKING:
    from pipeline.dataset import ShardData

IGNORE_INDEX = -100  # masked_lm_ids / packed next_sentence_label padding (as in HF)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "masked_lm_positions",
                "masked_lm_ids", "next_sentence_label", "position_ids", "cls_positions",
                "cu_seqlens", "max_seqlen")


@dataclass
class Batch:
    """One micro-batch. Tensors are int64 (cu_seqlens int32); R rows of width T (rounded up
    to `pad_to_multiple_of`), P = a row's most predictions, S = a row's most instances."""
    input_ids: torch.Tensor            # (R, T), [PAD] = 0 after each row
    attention_mask: torch.Tensor       # (R, T), 1 on real tokens
    token_type_ids: torch.Tensor       # (R, T), 1 on each instance's segment B
    masked_lm_positions: torch.Tensor  # (R, P), positions in the row, padded with 0
    masked_lm_ids: torch.Tensor        # (R, P), padded with -100
    next_sentence_label: torch.Tensor | None  # (R,) or packed (R, S) padded -100; None: no NSP
    sample_ids: np.ndarray             # (N,) shard << 32 | row of every instance, plan order
    num_tokens: int                    # real tokens in the batch (throughput counters)
    position_ids: torch.Tensor | None = None   # packed: (R, T), 0 at each instance's start
    cls_positions: torch.Tensor | None = None  # packed: (R, S) each instance's [CLS], -1 pad
    cu_seqlens: torch.Tensor | None = None     # packed: (K+1,) int32 segments of the R*T grid
    max_seqlen: int | None = None              # packed: longest segment (a host int)
    seq_lens: np.ndarray | None = None         # (N,) real length of every instance
    num_predictions: int | None = None         # real MLM targets in the batch

    def __post_init__(self):
        if self.seq_lens is None:  # hand-built batches: derive the host counts once
            self.seq_lens = self.attention_mask.sum(1).numpy() if self.position_ids is None \
                else None
        if self.num_predictions is None:
            self.num_predictions = int((self.masked_lm_ids != IGNORE_INDEX).sum())

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    @property
    def num_nsp_labels(self) -> int:
        """NSP targets: one per instance when the data has NSP."""
        return 0 if self.next_sentence_label is None else len(self.sample_ids)

    @property
    def padding_fraction(self) -> float:
        """Share of this batch's token slots that are padding."""
        return padding_fraction(self.num_tokens, self.input_ids.numel())

    @property
    def padding_fraction_unpacked(self) -> float:
        """The same instances one per row, padded to the longest (what `collate` gives)."""
        return padding_fraction(self.num_tokens, padded_slots(self.seq_lens))

    def model_inputs(self, device: torch.device | str | None = None) -> dict:
        """Keyword arguments of the model; tensors moved to `device` without blocking (a
        pinned batch copies asynchronously), `max_seqlen` stays a Python int."""
        out = {n: getattr(self, n) for n in MODEL_INPUTS if getattr(self, n) is not None}
        if device is not None:
            out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                   for k, v in out.items()}
        return out

    def pin(self) -> Batch:
        """The same batch in page-locked memory (only where CUDA is present), so that the
        copy to the GPU runs asynchronously."""
        pinned = {f.name: getattr(self, f.name).pin_memory() for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **pinned)

    def __len__(self) -> int:
        """Instances (not rows) in the batch."""
        return len(self.sample_ids)


def _spread(dest_row, dest_col, lengths):
    """For lists of `lengths` (N,) placed at out[dest_row[i], dest_col[i]:...]: each
    element's (row, column, index within its list)."""
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(dest_row, lengths), np.repeat(dest_col, lengths) + pos, pos


def _gather(values, offsets, rows, lengths, out, dest_row, dest_col) -> None:
    """Copy the list entries of `rows` (lengths (N,)) into out[dest_row[i], dest_col[i]:...]."""
    r, c, pos = _spread(dest_row, dest_col, lengths)
    out[r, c] = values[np.repeat(offsets[rows], lengths) + pos]


def _gather_padded(values, offsets, rows, lengths, width, fill) -> np.ndarray:
    """(B, width) array of the list entries of `rows`, right-padded with `fill`."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    _gather(values, offsets, rows, lengths, out, np.arange(len(rows)), np.zeros(len(rows), int))
    return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(shard: ShardData, rows: np.ndarray, nsp: bool = True,
            pad_to_multiple_of: int = 1) -> Batch:
    """The rows `rows` of a shard as one Batch, one instance per row, padded to the longest."""
    rows = np.asarray(rows, dtype=np.int64)
    n = shard.num_tokens[rows]                                   # (B,)
    width = _round_up(int(n.max()), pad_to_multiple_of)
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
        num_tokens=int(n.sum()), seq_lens=n, num_predictions=int(p.sum()))


def segments(position_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(cu_seqlens (K+1,) int32, max_seqlen) of packed rows (R, T): the instances and the
    padding runs of the flattened grid, as `model.packing.cu_seqlens_from_position_ids`."""
    real = mask.astype(bool)
    starts = real & (position_ids == 0)
    starts[:, 1:] |= real[:, 1:] != real[:, :-1]
    starts[:, 0] = True
    cu = np.append(np.flatnonzero(starts), starts.size).astype(np.int32)
    return cu, int(np.diff(cu).max())


def collate_packed(shard: ShardData, rows: np.ndarray, row_length: int, nsp: bool = True,
                   pad_to_multiple_of: int = 1) -> Batch:
    """The rows `rows` of a shard packed into as few rows of <= row_length tokens as
    best-fit decreasing finds, padded to the fullest row. `sample_ids` keep the order of
    `rows` (the plan's), whatever the layout."""
    rows = np.asarray(rows, dtype=np.int64)
    n = shard.num_tokens[rows]                                    # (N,) instance lengths
    p = shard.mlm_offsets[rows + 1] - shard.mlm_offsets[rows]     # (N,) predictions
    groups = pack_rows(n.tolist(), row_length)
    N, R = len(rows), len(groups)
    row_of, slot = np.empty(N, np.int64), np.empty(N, np.int64)
    offset, first_p = np.empty(N, np.int64), np.empty(N, np.int64)
    fill, fill_p = np.zeros(R, np.int64), np.zeros(R, np.int64)
    for r, members in enumerate(groups):
        for s, i in enumerate(members):  # instances back to back, in plan order within a row
            row_of[i], slot[i], offset[i], first_p[i] = r, s, fill[r], fill_p[r]
            fill[r] += n[i]
            fill_p[r] += p[i]
    width = _round_up(int(fill.max()), pad_to_multiple_of)
    ids = np.zeros((R, width), np.int64)
    _gather(shard.ids, shard.ids_offsets, rows, n, ids, row_of, offset)
    tok_row, tok_col, tok_pos = _spread(row_of, offset, n)  # every real token
    mask, types, pos_ids = (np.zeros((R, width), np.int64) for _ in range(3))
    mask[tok_row, tok_col] = 1
    pos_ids[tok_row, tok_col] = tok_pos
    types[tok_row, tok_col] = tok_pos >= np.repeat(shard.segment_b_start[rows], n)
    width_p = max(int(fill_p.max()), 1)
    positions = np.zeros((R, width_p), np.int64)
    _gather(shard.mlm_pos, shard.mlm_offsets, rows, p, positions, row_of, first_p)
    pred_row, pred_col, _ = _spread(row_of, first_p, p)
    positions[pred_row, pred_col] += np.repeat(offset, p)  # positions index the row
    targets = np.full((R, width_p), IGNORE_INDEX, np.int64)
    _gather(shard.mlm_ids, shard.mlm_offsets, rows, p, targets, row_of, first_p)
    S = max(len(g) for g in groups)
    cls = np.full((R, S), -1, np.int64)
    cls[row_of, slot] = offset
    labels = None
    if nsp:
        labels = np.full((R, S), IGNORE_INDEX, np.int64)
        labels[row_of, slot] = shard.nsp_label[rows]
    cu, longest = segments(pos_ids, mask)
    t = torch.from_numpy
    return Batch(
        input_ids=t(ids), attention_mask=t(mask), token_type_ids=t(types),
        masked_lm_positions=t(positions), masked_lm_ids=t(targets),
        next_sentence_label=t(labels) if nsp else None,
        sample_ids=(np.int64(shard.index) << 32) | rows, num_tokens=int(n.sum()),
        position_ids=t(pos_ids), cls_positions=t(cls), cu_seqlens=t(cu), max_seqlen=longest,
        seq_lens=n, num_predictions=int(p.sum()))


def concat(parts: list[Batch]) -> Batch:
    """Batches side by side (more rows), padded to the widest; all packed or all not."""
    if len({p.packed for p in parts}) > 1:
        raise ValueError("cannot concatenate packed and unpacked batches")

    def cat(name, fill):
        tensors = [getattr(p, name) for p in parts]
        if tensors[0] is None:
            return None
        if tensors[0].dim() == 1:
            return torch.cat(tensors)
        width = max(t.shape[1] for t in tensors)
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)
                          for t in tensors])
    packed = parts[0].packed
    out = Batch(cat("input_ids", 0), cat("attention_mask", 0), cat("token_type_ids", 0),
                cat("masked_lm_positions", 0), cat("masked_lm_ids", IGNORE_INDEX),
                cat("next_sentence_label", IGNORE_INDEX if packed else 0),
                np.concatenate([p.sample_ids for p in parts]),
                sum(p.num_tokens for p in parts),
                position_ids=cat("position_ids", 0), cls_positions=cat("cls_positions", -1),
                seq_lens=np.concatenate([p.seq_lens for p in parts]),
                num_predictions=sum(p.num_predictions for p in parts))
    if packed:  # the wider grid has other segments: recompute them
        cu, longest = segments(out.position_ids.numpy(), out.attention_mask.numpy())
        out.cu_seqlens, out.max_seqlen = torch.from_numpy(cu), longest
    return out
