"""Packed rows: which tokens of a row belong to which sequence, as masks and offsets.

A packed row holds several sequences back to back, then padding. As in transformers'
`DataCollatorWithFlattening`, the row is marked by its per-token `position_ids`, which
restart at 0 where a sequence starts; `attention_mask` (1 = real token) marks the padding.
A row whose position ids are 0, 1, 2, ... holds one sequence: the plain padded batch is the
special case of one sequence per row.

Two descriptions of the same layout are derived here:
- `block_diagonal_mask` (B, 1, T, T) for SDPA: a real token attends to the real tokens of
  its own sequence only; a padding token attends to every real token of its row (as in an
  unpacked batch: its output is never read, but it must attend to something, or SDPA
  returns NaN and the NaN reaches the gradients).
- `cu_seqlens` (N+1,) int32 for a variable-length kernel: the start offsets of the N
  *segments* of the flattened (B*T) token grid, where a segment is a sequence or a run of
  padding, and `cu_seqlens[-1] == B*T`. Covering the padding too keeps every shape static
  (no gather of the real tokens, whose count the host would have to read) and gives every
  padding token a defined output. A loader computes them on the host, where they cost no
  device sync; `cu_seqlens_from_position_ids` is the reference.

Pure tensor functions: no modules, no weights, never called with data the caller did not
pass. The ones that return Python numbers read tensors on the host; on CUDA they would sync,
so the training step never calls them on device tensors.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def real_tokens(position_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(B, T) bool, True on real tokens (every token when there is no attention_mask)."""
    if attention_mask is None:
        return torch.ones(position_ids.shape, dtype=torch.bool, device=position_ids.device)
    return attention_mask.bool()


def sequence_index(position_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(B, T) int64: 1 + the index of each real token's sequence within its row; 0 on padding.

    A sequence starts at the row's first token and wherever the position id is 0.
    """
    starts = position_ids == 0
    starts[:, 0] = True  # a row always starts a sequence, whatever its first position id
    return starts.long().cumsum(1) * real_tokens(position_ids, attention_mask)


def block_diagonal_mask(position_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(B, 1, T, T) bool for SDPA, True where query i may attend to key j.

    Real queries see the real keys of their own sequence; padding queries see all real keys
    of their row. With one sequence per row this is exactly the padding mask of an unpacked
    batch, broadcast over the queries.
    """
    seq = sequence_index(position_ids, attention_mask)               # (B, T), 0 = padding
    real = seq > 0
    same = seq[:, :, None] == seq[:, None, :]                         # (B, T query, T key)
    return torch.where(real[:, :, None], same, real[:, None, :])[:, None]


def segment_starts(position_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(B, T) bool, True where a segment of the flattened grid starts: a row's first token,
    a real token with position id 0, the first token of each run of padding or of real
    tokens."""
    real = real_tokens(position_ids, attention_mask)
    starts = real & (position_ids == 0)
    starts[:, 1:] |= real[:, 1:] != real[:, :-1]
    starts[:, 0] = True
    return starts


def cu_seqlens_from_position_ids(position_ids: Tensor, attention_mask: Tensor | None = None
                                 ) -> tuple[Tensor, int]:
    """(cu_seqlens (N+1,) int32, max_seqlen): the segments of the flattened (B*T) grid.

    Segments are the sequences and the padding runs, in row-major order; cu_seqlens[-1] is
    B*T. Reads the tensors on the host (a device sync on CUDA): for loaders and tests.
    """
    starts = segment_starts(position_ids, attention_mask).flatten()
    offsets = torch.nonzero(starts).squeeze(1)                        # (N,)
    end = torch.tensor([starts.numel()], device=offsets.device)
    cu = torch.cat([offsets, end]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def sequence_lengths(position_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(N,) int64 lengths of the real sequences (padding runs left out), row-major order.

    For FLOP counts, which are per real sequence. Host-side, like `cu_seqlens_from_...`.
    """
    seq = sequence_index(position_ids, attention_mask)
    B = seq.size(0)
    per_row = seq.max(1).values                                       # (B,) sequences per row
    counts = torch.zeros(B, int(per_row.max()) + 1, dtype=torch.long, device=seq.device)
    counts.scatter_add_(1, seq, torch.ones_like(seq))                 # column 0 counts padding
    lengths = counts[:, 1:]
    return lengths[lengths > 0]


__all__ = ["real_tokens", "sequence_index", "block_diagonal_mask", "segment_starts",
           "cu_seqlens_from_position_ids", "sequence_lengths"]
