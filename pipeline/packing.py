"""Packing: which instances share a row, so that a batch carries little padding.

A packed row holds several instances back to back, then padding up to the batch's width;
`pipeline.batch.collate_packed` lays them out (position ids restarting at 0, one [CLS] per
instance, `cu_seqlens` of the row's segments) and `model.packing` describes what the model
does with them. This module only decides the grouping:

- `pack_rows`: best-fit decreasing. Instances are placed longest first, each into the row
  whose free room fits it most tightly (ties: the older row), else into a new row. It is
  within 11/9 of the fewest rows possible and, for the length mixes of BERT's data, close to
  it; a pure function of the lengths, so the same batch always packs the same way (resume
  and every rank see the same layout).
- `padding_fraction` and `padded_slots`: padding of a batch packed or one instance per row,
  the numbers the loader reports and the pretraining job logs.

Which instances form a batch is the loader's plan (`pipeline.loader`), never decided here.
Pure Python (no numpy, no torch): the GPU benchmark packs its length mix with it on a
machine that has only torch.
"""
from __future__ import annotations

import bisect
from typing import Sequence


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of at most `capacity` tokens (best-fit
    decreasing). Each row lists its instances in ascending index order; rows are ordered by
    their first instance. Every index appears exactly once."""
    lengths = [int(n) for n in lengths]
    too_long = [n for n in lengths if n > capacity or n < 1]
    if too_long:
        raise ValueError(f"cannot pack an instance of {too_long[0]} tokens into rows of "
                         f"{capacity}")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), ascending: best fit = leftmost fit
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
        else:
            room, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    for r in rows:
        r.sort()
    rows.sort(key=lambda r: r[0])
    return rows


def packed_width(lengths: Sequence[int], rows: list[list[int]], multiple: int = 1) -> int:
    """The width of a packed batch: its fullest row, rounded up to `multiple`."""
    width = max(sum(int(lengths[i]) for i in r) for r in rows)
    return -(-width // multiple) * multiple


def padded_slots(lengths: Sequence[int], multiple: int = 1) -> int:
    """Token slots of the same instances one per row, padded to the longest (`collate`)."""
    width = -(-max(int(n) for n in lengths) // multiple) * multiple
    return len(lengths) * width


def padding_fraction(real_tokens: int, slots: int) -> float:
    """Share of a batch's token slots that are padding."""
    return 1.0 - real_tokens / slots if slots else 0.0


__all__ = ["pack_rows", "packed_width", "padded_slots", "padding_fraction"]
