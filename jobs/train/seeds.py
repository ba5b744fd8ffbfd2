"""Dropout seeds that depend on the data position, never on history.

Each micro-batch's dropout masks come from `torch.manual_seed(dropout_seed(...))` with the
run's seed, the rank and the micro-batch's index in the run: a resumed run, or a replaced
worker, draws exactly the masks an uninterrupted run would have. Pretraining and
fine-tuning use the same formula.
"""
from __future__ import annotations


def dropout_seed(seed: int, rank: int, micro_batch: int) -> int:
    """Seed of one micro-batch's dropout: a function of (seed, rank, position) only."""
    return (seed * 1_000_003 + rank * 7_919 + micro_batch * 104_729) % (2 ** 63)
