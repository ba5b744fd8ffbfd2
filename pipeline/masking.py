"""Masked-LM predictions: Google's `create_masked_lm_predictions`, vectorized over instances.

For each instance: candidates are its non-special positions (with whole-word masking, a
group of positions: a token flagged as a word start and the unflagged tokens after it, see
`word_starts`; without flags, a WordPiece and its "##" continuations); num_to_predict =
min(max_predictions_per_seq, max(1, round(len * masked_lm_prob))) with `len` counting
[CLS]/[SEP] and Python's round-half-even, as Google does; groups are taken in random order,
skipping a group that would exceed num_to_predict; each chosen position becomes [MASK] (80%),
stays (10%) or becomes a random token from `vocab.random_ids` (10%).

Instances are processed in batches laid out as a (rows, max_len) matrix, so the work is
numpy per batch, never Python per token. Never touches special tokens, never reorders or
drops instances.

Randomness comes from a `Draws` object: `SequentialDraws` (a numpy Generator consumed in
order, what `prepare` uses for static masks; a Generator passed as `rng` is wrapped in one)
or the counter-based draws of dynamic masking (`pipeline.dynamic`), where every instance's
numbers depend on its own key alone. The selection rule is the same code either way.

Word starts are the interface between whoever knows the words (the tokenizer, a word
segmenter such as jieba for Chinese) and the masker: one uint8 per token, 1 where a new
masking group begins. A candidate right after a non-candidate ([CLS], [SEP], the start of a
truncated segment) always begins a group, whatever its flag.
"""
from __future__ import annotations

import numpy as np

from pipeline.config import PrepareConfig
from pipeline.tokenizer import VocabInfo

BATCH_ROWS = 4096
"""Instances masked together; fixed, so the random stream (and the output) never depends on
how many instances a caller passes at once beyond this."""


class SequentialDraws:
    """The random numbers of static masking: one Generator, consumed batch by batch (group
    order keys), then once for all predictions (80/10/10 and the random token)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def keys(self, r0: int, r1: int, width: int) -> np.ndarray:
        """(r1 - r0, width) uniforms in [0, 1): the order in which groups are taken."""
        return self.rng.random((r1 - r0, width))

    def replacements(self, rows: np.ndarray, cols: np.ndarray, num_random: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Per prediction (row, position): a uniform in [0, 1) choosing [MASK]/kept/random,
        and an index in [0, num_random) choosing the random token."""
        u = self.rng.random(len(rows))
        return u, self.rng.integers(0, num_random, size=len(rows))


def word_starts_from_pieces(tokens: np.ndarray, vocab: VocabInfo) -> np.ndarray:
    """WordPiece word starts: uint8 per token, 0 on a "##" continuation, else 1."""
    return (~vocab.is_subword[tokens]).view(np.uint8)


def _mask_rows(tok2d: np.ndarray, lengths: np.ndarray, key: np.ndarray,
               cfg: PrepareConfig, vocab: VocabInfo,
               starts2d: np.ndarray | None = None) -> np.ndarray:
    """Chosen positions of a padded batch: bool (rows, width), True = predict this token.

    `key`: (rows, width) uniforms, the random order of the groups (Google's shuffle).
    `starts2d`: bool (rows, width) word starts (whole-word masking); None: from "##".
    """
    rows, width = tok2d.shape
    col = np.arange(width)
    is_special = np.zeros(vocab.size, dtype=np.bool_)
    is_special[vocab.special_ids] = True
    cand = ~is_special[tok2d] & (col < lengths[:, None])          # (rows, width)
    num_to_predict = np.minimum(cfg.max_predictions_per_seq,
                                np.maximum(1, np.rint(lengths * cfg.masked_lm_prob))
                                ).astype(np.int64)
    # A uniform key per position; taking groups in ascending key order is Google's shuffle.
    # Float64 keys never tie in practice, so unstable sorts give a deterministic result.
    key = np.where(cand, key, 2.0)
    if not cfg.do_whole_word_mask:
        # One-token groups: the greedy rule takes the num_to_predict smallest keys, i.e.
        # every candidate whose key is at most the row's num_to_predict-th smallest. Only
        # the k = max(num_to_predict) smallest keys of a row matter: partition, then sort k.
        k = min(int(num_to_predict.max()), width)
        smallest = np.sort(np.partition(key, k - 1, axis=1)[:, :k], axis=1)
        kth = smallest[np.arange(rows), num_to_predict - 1]
        return cand & (key <= kth[:, None])

    prev_cand = np.zeros_like(cand)
    prev_cand[:, 1:] = cand[:, :-1]
    # A group starts at a candidate flagged as a word start, or right after a non-candidate;
    # each candidate's head is the last group start at or before it.
    if starts2d is None:
        starts2d = ~vocab.is_subword[tok2d]
    head = cand & (starts2d | ~prev_cand)
    head_of = np.maximum.accumulate(np.where(head, col, 0), axis=1)   # (rows, width)
    flat_head = (np.arange(rows)[:, None] * width + head_of)[cand]
    size = np.bincount(flat_head, minlength=rows * width).reshape(rows, width)
    key[~head] = 2.0                                                  # non-heads sort last
    order = np.argsort(key, axis=1)                                   # (rows, width)
    sizes = np.take_along_axis(size, order, axis=1)                   # 0 past the last head
    # Google's greedy rule, one group per row at a time: skip a group that would overflow
    # num_to_predict, stop once it is reached.
    taken = np.zeros((rows, width), dtype=np.bool_)
    filled = np.zeros(rows, dtype=np.int64)
    for t in range(width):
        s = sizes[:, t]
        open_rows = (s > 0) & (filled < num_to_predict)
        if not open_rows.any():
            break
        take = open_rows & (filled + s <= num_to_predict)
        taken[:, t] = take
        filled += np.where(take, s, 0)
    chosen_head = np.zeros((rows, width), dtype=np.bool_)
    np.put_along_axis(chosen_head, order, taken, axis=1)
    return cand & np.take_along_axis(chosen_head, head_of, axis=1)


def mask_batch(tokens: np.ndarray, offsets: np.ndarray,
               rng: np.random.Generator | SequentialDraws, cfg: PrepareConfig,
               vocab: VocabInfo, word_starts: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mask many instances given as flat tokens and row offsets (len rows + 1).

    `rng`: a Generator (static masking: consumed in order) or any object with the methods
    of `SequentialDraws` (dynamic masking's per-instance draws). `cfg` needs only
    `masked_lm_prob`, `max_predictions_per_seq` and `do_whole_word_mask`.

    `word_starts` (uint8 or bool, same layout as `tokens`): the masking groups of whole-word
    masking (1 = a new group begins); None derives them from "##" pieces. Ignored without
    `cfg.do_whole_word_mask`. The random stream is the same either way, so flags equal to
    the "##" rule give byte-identical output.

    Returns (masked tokens, same layout as `tokens`; positions within each instance,
    ascending per instance; original ids at those positions; per-instance prediction
    offsets, len rows + 1). Positions and ids are flat in row order.
    """
    draws = SequentialDraws(rng) if isinstance(rng, np.random.Generator) else rng
    masked = tokens.copy()
    lengths = np.diff(offsets)
    pos_parts, row_counts = [], []
    for r0 in range(0, len(lengths), BATCH_ROWS):
        r1 = min(r0 + BATCH_ROWS, len(lengths))
        lens = lengths[r0:r1]
        width = int(lens.max()) if len(lens) else 0
        # the batch as a (rows, width) matrix padded with [PAD] (a special: never chosen);
        # a boolean mask assignment fills the valid cells in row-major order
        valid = np.arange(width) < lens[:, None]
        tok2d = np.full((r1 - r0, width), vocab.pad_id, dtype=tokens.dtype)
        tok2d[valid] = tokens[offsets[r0]:offsets[r1]]
        starts2d = None
        if word_starts is not None and cfg.do_whole_word_mask:
            starts2d = np.ones((r1 - r0, width), dtype=np.bool_)
            starts2d[valid] = word_starts[offsets[r0]:offsets[r1]]
        chosen = _mask_rows(tok2d, lens, draws.keys(r0, r1, width), cfg, vocab, starts2d)
        prow, pcol = np.nonzero(chosen)   # row-major: ascending positions within each row
        pos_parts.append((prow + r0, pcol))
        row_counts.append(np.bincount(prow, minlength=r1 - r0))
    if pos_parts:
        prow = np.concatenate([p[0] for p in pos_parts])
        pcol = np.concatenate([p[1] for p in pos_parts])
        counts = np.concatenate(row_counts)
    else:
        prow = pcol = counts = np.zeros(0, dtype=np.int64)
    where = offsets[prow] + pcol                     # flat index of every prediction
    original = tokens[where]
    # 80% [MASK]; of the rest, half unchanged, half a random non-special token.
    u, pick = draws.replacements(prow, pcol, len(vocab.random_ids))
    random_tok = vocab.random_ids[pick]
    masked[where] = np.where(u < 0.8, vocab.mask_id, np.where(u < 0.9, original, random_tok))
    pred_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(counts, out=pred_offsets[1:])
    return masked, pcol.astype(np.int64), original, pred_offsets


def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, cfg: PrepareConfig,
                vocab: VocabInfo, word_starts: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask one instance: (masked tokens, positions ascending, original ids there)."""
    masked, positions, original, _ = mask_batch(
        np.asarray(tokens), np.array([0, len(tokens)]), rng, cfg, vocab,
        None if word_starts is None else np.asarray(word_starts))
    return masked, positions, original
