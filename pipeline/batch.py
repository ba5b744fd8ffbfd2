"""One padded micro-batch of pretraining instances, and how shard rows become one.

`collate` gathers rows of a shard (flat columns + offsets, `pipeline.dataset.ShardData`)
into int64 tensors padded to the batch's longest row, with the MLM targets as sparse
(position, id) pairs padded with IGNORE_INDEX. Pure numpy / torch; never reads files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.dataset import ShardData

IGNORE_INDEX = -100  # masked_lm_ids padding: no prediction at this slot (as in HF)


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


def concat(parts: list[Batch]) -> Batch:
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
