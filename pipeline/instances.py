"""NSP/MLM training instances from tokenized documents: Google's `create_instances_from_document`.

One call handles one shuffle block (the documents whose random next sentences are drawn
from each other) and returns its instances as an Arrow table in the shard schema. The
procedure follows Google's `create_pretraining_data.py`: per pass (`dupe_factor`) and per
document, a target length (max_num_tokens, or with probability short_seq_prob a uniform int
in [2, max_num_tokens], drawn once per document as Google does); sentences accumulate into
a chunk until it reaches the target or the document ends; A is a random prefix of the
chunk's sentences; B is the rest (IsNext) or, with probability 0.5 or whenever the chunk
holds one sentence, a span of another document of the block (NotNext), and the unused
sentences go back to the document; the longer side is truncated from a random end until
the pair fits. All instances of the block are then shuffled and masked (pipeline/masking.py).

Without NSP the rows are RoBERTa's FULL-SENTENCES: whole sentences in corpus order up to
max_seq_length, going on into the next document after an extra [SEP]; with
`doc_sentences`, DOC-SENTENCES (a row ends with its document). With dynamic masking nothing
is masked here: instances are written once, as they are, and the loader masks them.

Python runs once per chunk, never per token: every sentence and span is an index range into
one flat id array, and tokens are gathered, truncated and masked with numpy. Randomness comes
only from `np.random.default_rng([seed, block_id])`, so a block's output is deterministic.
Never reads files or knows about Ray: lists of arrays in, a table out.
"""
from __future__ import annotations

from array import array
from bisect import bisect_left

import numpy as np
import pyarrow as pa

from pipeline.config import PrepareConfig
from pipeline.errors import InputError
from pipeline.masking import mask_batch, word_starts_from_pieces
from pipeline.schema import instance_schema, token_type
from pipeline.tokenizer import VocabInfo


def _truncation(len_a: np.ndarray, len_b: np.ndarray, max_num_tokens: int):
    """Tokens Google's `truncate_seq_pair` removes from A and from B: (cut_a, cut_b).

    Google removes one token at a time from the longer side (B on ties) until the pair
    fits; that sequence depends only on the lengths, so it has a closed form: first the
    longer side down to the other's length (A) or one below it (B), then alternately.
    """
    excess = np.maximum(len_a + len_b - max_num_tokens, 0)
    a_longer = len_a > len_b
    lead = np.where(a_longer, len_a - len_b, len_b - len_a + 1)   # steps on the longer side
    first = np.minimum(excess, lead)
    rest = excess - first
    # After `first` steps: A longer -> tie, so B goes next; B longer -> A one above, A next.
    next_side, other_side = (rest + 1) // 2, rest // 2
    cut_a = np.where(a_longer, first + other_side, next_side)
    cut_b = np.where(a_longer, next_side, first + other_side)
    return cut_a, cut_b


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of the index ranges [start, start + length), without a Python loop."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


def _spans(sent_off: list[int], doc_first: list[int], cfg: PrepareConfig,
           rng: np.random.Generator):
    """Google's chunking and A/B choice for all passes: token ranges per instance.

    `sent_off[s]` is the flat offset of sentence s (len S + 1); document d holds sentences
    doc_first[d] .. doc_first[d + 1] - 1. Returns int64 arrays a0, a1, b0, b1 (half-open
    ranges into the flat ids) and is_random (NotNext).
    """
    max_num_tokens = cfg.max_seq_length - 3
    num_docs = len(doc_first) - 1
    # Scalar draws come from a list of uniforms refilled in fixed-size batches (a scalar
    # rng.integers call costs ≈ 3 µs; this ≈ 0.1 µs). A chunk uses at most 13 draws, so the
    # list is topped up before each chunk; the stream depends on the seed alone.
    draws: list[float] = []
    k = 0
    out = array("q")  # 5 int64 per instance: 40 bytes, vs ≈ 200 for a tuple in a list
    for _ in range(cfg.passes):
        for d in range(num_docs):
            if k + 16 > len(draws):
                draws, k = draws[k:] + rng.random(4096).tolist(), 0
            first, end = doc_first[d], doc_first[d + 1]
            target = max_num_tokens
            if draws[k] < cfg.short_seq_prob:
                target = 2 + int(draws[k + 1] * (max_num_tokens - 1))  # uniform in [2, max]
            k += 2
            i = first
            while i < end:
                if k + 16 > len(draws):
                    draws, k = draws[k:] + rng.random(4096).tolist(), 0
                # chunk = sentences i .. e-1: the first e whose running length reaches the
                # target, or the document's end
                e = bisect_left(sent_off, sent_off[i] + target, i + 1, end)
                n = e - i
                # A = sentences i .. a_end-1, a_end uniform in [i+1, e-1] (i+1 if n == 1)
                a_end = i + 1 if n == 1 else i + 1 + int(draws[k] * (n - 1))
                k += 1
                if n == 1 or draws[k] < 0.5:
                    target_b = target - (sent_off[a_end] - sent_off[i])
                    for _ in range(10):  # Google: up to 10 tries for another document
                        k += 1
                        rd = int(draws[k] * num_docs)
                        if rd != d:
                            break
                    r0, r1 = doc_first[rd], doc_first[rd + 1]
                    k += 1
                    rs = r0 + int(draws[k] * (r1 - r0))   # a random sentence of document rd
                    re_ = bisect_left(sent_off, sent_off[rs] + target_b, rs + 1, r1)
                    out.extend((sent_off[i], sent_off[a_end], sent_off[rs], sent_off[re_], 1))
                    i = a_end  # the chunk's unused sentences start the next chunk
                else:
                    out.extend((sent_off[i], sent_off[a_end], sent_off[a_end], sent_off[e], 0))
                    i = e
                k += 1
    spans = np.frombuffer(out, dtype=np.int64).reshape(-1, 5)
    return spans[:, 0], spans[:, 1], spans[:, 2], spans[:, 3], spans[:, 4]


def flatten_documents(documents: list[list[np.ndarray]]):
    """(flat int32 ids, sentence lengths, sentences per document) of nested documents."""
    sentences = [s for doc in documents for s in doc]
    ids = np.concatenate(sentences).astype(np.int32, copy=False) if sentences \
        else np.zeros(0, np.int32)
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    per_doc = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    return ids, lengths, per_doc


def create_block_instances(documents: list[list[np.ndarray]], cfg: PrepareConfig,
                           vocab: VocabInfo, seed: int, block_id: int) -> pa.Table:
    """Instances of one block: `documents` is a list of documents, each a list of 1-D int32
    arrays (a sentence's ids, no [CLS]/[SEP]). Returns a table of
    `instance_schema(vocab.size)`, rows shuffled."""
    return create_block_instances_flat(*flatten_documents(documents), cfg, vocab, seed,
                                       block_id)


def _sentence_rows(sent_off: list[int], doc_first: list[int], budget: int,
                   cross_documents: bool) -> tuple[list[int], list[int]]:
    """RoBERTa's FULL-SENTENCES (or, without `cross_documents`, DOC-SENTENCES) rows.

    Whole sentences are packed in order while the row's body stays within `budget` tokens,
    an extra [SEP] counting one wherever a row goes on into the next document; a sentence
    longer than `budget` alone is cut into budget-sized pieces. Returns the rows as half-open
    ranges (starts, ends) into the flat ids; documents are contiguous there, so a row is one
    range, with a [SEP] to insert at each document start inside it.
    """
    starts: list[int] = []
    ends: list[int] = []
    start, used = 0, 0
    for d in range(len(doc_first) - 1):
        first, last = doc_first[d], doc_first[d + 1]
        if not cross_documents and used:
            starts.append(start)
            ends.append(sent_off[first])
            used = 0
        if not used:
            start = sent_off[first]
        for s in range(first, last):
            so, eo = sent_off[s], sent_off[s + 1]
            length = eo - so
            sep = 1 if used and s == first else 0
            if used + sep + length <= budget:
                used += sep + length
                continue
            if used:
                starts.append(start)
                ends.append(so)
            while length > budget:          # one sentence longer than a row: cut it up
                starts.append(so)
                ends.append(so + budget)
                so, length = so + budget, length - budget
            start, used = so, length
    if used:
        starts.append(start)
        ends.append(sent_off[-1])
    return starts, ends


def _pair_pieces(sent_off, doc_first, cfg: PrepareConfig, rng: np.random.Generator,
                 cls_at: int, sep_at: int):
    """Google's NSP pairs as pieces [CLS] A [SEP] B [SEP]: (piece starts, lengths, pieces per
    row, segment_b_start, is_random), rows shuffled."""
    a0, a1, b0, b1, is_random = _spans(sent_off.tolist(), doc_first.tolist(), cfg, rng)
    cut_a, cut_b = _truncation(a1 - a0, b1 - b0, cfg.max_seq_length - 3)
    # Each removed token comes off the front or the back with probability 1/2 (Google).
    front_a, front_b = rng.binomial(cut_a, 0.5), rng.binomial(cut_b, 0.5)
    a0, a1 = a0 + front_a, a1 - (cut_a - front_a)
    b0, b1 = b0 + front_b, b1 - (cut_b - front_b)
    ok = (a1 > a0) & (b1 > b0)                     # Google asserts both sides non-empty
    perm = rng.permutation(int(ok.sum()))          # Google shuffles all instances
    a0, a1, b0, b1, is_random = (x[ok][perm] for x in (a0, a1, b0, b1, is_random))
    one = np.ones(len(a0), dtype=np.int64)
    starts = np.stack([cls_at * one, a0, sep_at * one, b0, sep_at * one], axis=1)
    lens = np.stack([one, a1 - a0, one, b1 - b0, one], axis=1)
    return starts.ravel(), lens.ravel(), 5 * one, a1 - a0 + 2, is_random


def _sentence_pieces(sent_off, doc_first, cfg: PrepareConfig, rng: np.random.Generator,
                     cls_at: int, sep_at: int):
    """FULL-/DOC-SENTENCES rows as pieces [CLS] doc part [SEP] doc part ... [SEP], the same
    rows once per pass (static masking gives each copy its own masks), rows shuffled."""
    s, e = _sentence_rows(sent_off.tolist(), doc_first.tolist(), cfg.max_seq_length - 2,
                          cross_documents=not cfg.doc_sentences)
    s = np.tile(np.asarray(s, dtype=np.int64), cfg.passes)
    e = np.tile(np.asarray(e, dtype=np.int64), cfg.passes)
    perm = rng.permutation(len(s))
    s, e = s[perm], e[perm]
    # document starts strictly inside each row: there the row gets a [SEP]
    doc_off = sent_off[doc_first[1:-1]]
    lo, hi = np.searchsorted(doc_off, s, "right"), np.searchsorted(doc_off, e, "left")
    inner = hi - lo                                  # (rows,) document breaks in the row
    parts = inner + 1
    # each row: [CLS], then per part (range, [SEP]); part j of a row starts at the row's
    # start (j = 0) or its j-th inner document start, and ends at the next one or the end
    breaks = doc_off[_gather_ranges(lo, inner)]      # all rows' inner breaks, row by row
    row_of_part = np.repeat(np.arange(len(s)), parts)
    first_part = np.concatenate([[0], np.cumsum(parts)[:-1]])
    is_first = np.zeros(len(row_of_part), dtype=np.bool_)
    is_first[first_part] = True
    is_last = np.zeros(len(row_of_part), dtype=np.bool_)
    is_last[first_part + parts - 1] = True
    p0 = np.empty(len(row_of_part), dtype=np.int64)
    p1 = np.empty(len(row_of_part), dtype=np.int64)
    p0[is_first], p0[~is_first] = s, breaks
    p1[is_last], p1[~is_last] = e, breaks
    # pieces: [CLS] per row, then (part, [SEP]) per part, in row order
    n_pieces = 1 + 2 * parts
    piece_start = np.full(int(n_pieces.sum()), sep_at, dtype=np.int64)
    piece_len = np.ones(len(piece_start), dtype=np.int64)
    row_first = np.concatenate([[0], np.cumsum(n_pieces)[:-1]])
    piece_start[row_first] = cls_at
    part_at = np.repeat(row_first + 1, parts) + 2 * (np.arange(len(row_of_part))
                                                     - np.repeat(first_part, parts))
    piece_start[part_at], piece_len[part_at] = p0, p1 - p0
    num_tokens = np.bincount(np.repeat(np.arange(len(s)), n_pieces), weights=piece_len,
                             minlength=len(s)).astype(np.int64)
    return piece_start, piece_len, n_pieces, num_tokens, np.zeros(len(s), dtype=np.int64)


def create_block_instances_flat(ids: np.ndarray, sentence_lengths: np.ndarray,
                                doc_num_sentences: np.ndarray, cfg: PrepareConfig,
                                vocab: VocabInfo, seed: int, block_id: int,
                                word_starts: np.ndarray | None = None) -> pa.Table:
    """`create_block_instances` on the flat layout `encode_sentences` produces: all ids in
    one array, a length per sentence, a sentence count per document. Empty sentences and
    documents left empty are dropped.

    `word_starts` (uint8 per id, optional): whole-word masking groups, gathered with the
    ids into each instance and handed to `mask_batch` (None: groups from "##" pieces).
    With `cfg.masking == "dynamic"` nothing is masked: the table holds the instances as they
    are, no predictions, and (with whole-word masking) a `word_starts` column for the loader.
    """
    rng = np.random.default_rng([seed, block_id])
    ids = np.asarray(ids)
    sentence_lengths = np.asarray(sentence_lengths, dtype=np.int64)
    # Drop empty sentences (and documents left without one); offsets stay valid because an
    # empty sentence holds no ids.
    keep = sentence_lengths > 0
    sent_doc = np.repeat(np.arange(len(doc_num_sentences)), doc_num_sentences)
    per_doc = np.bincount(sent_doc[keep], minlength=len(doc_num_sentences))
    per_doc = per_doc[per_doc > 0]
    sent_off = np.concatenate([[0], np.cumsum(sentence_lengths[keep])])
    doc_first = np.concatenate([[0], np.cumsum(per_doc)])
    dynamic = cfg.masking == "dynamic"
    with_starts = dynamic and cfg.do_whole_word_mask
    schema = instance_schema(vocab.size, word_starts=with_starts)
    if len(per_doc) == 0:
        return schema.empty_table()

    # Every instance is a run of pieces: ranges into ids + [CLS, SEP] appended.
    src = np.concatenate([ids, np.array([vocab.cls_id, vocab.sep_id], dtype=ids.dtype)])
    cls_at, sep_at = len(ids), len(ids) + 1
    make = _pair_pieces if cfg.nsp else _sentence_pieces
    piece_start, piece_len, row_pieces, segment_b_start, is_random = make(
        sent_off, doc_first, cfg, rng, cls_at, sep_at)
    gather = _gather_ranges(piece_start, piece_len)
    tokens = src[gather]
    num_tokens = np.bincount(np.repeat(np.arange(len(row_pieces)), row_pieces),
                             weights=piece_len, minlength=len(row_pieces)).astype(np.int64)
    if not cfg.nsp:
        segment_b_start = num_tokens
    inst_word_starts = None
    if cfg.do_whole_word_mask and (word_starts is not None or with_starts):
        # [CLS]/[SEP] flagged 1 (they are specials: never in a group anyway)
        flags = word_starts_from_pieces(ids, vocab) if word_starts is None else word_starts
        inst_word_starts = np.concatenate(
            [np.asarray(flags, dtype=np.uint8), np.ones(2, np.uint8)])[gather]
    offsets = np.concatenate([[0], np.cumsum(num_tokens)])
    if offsets[-1] >= 2**31:
        raise InputError(f"block {block_id}: {offsets[-1]} tokens overflow Arrow's 32-bit "
                         "list offsets; lower --block-bytes or --dupe-factor")

    if dynamic:
        masked, positions, original = tokens, np.zeros(0, np.int64), np.zeros(0, np.int64)
        pred_offsets = np.zeros(len(num_tokens) + 1, dtype=np.int64)
    else:
        masked, positions, original, pred_offsets = mask_batch(tokens, offsets, rng, cfg,
                                                               vocab, inst_word_starts)

    tok = token_type(vocab.size)
    tok_np = np.uint16 if tok == pa.uint16() else np.int32
    columns = [
        pa.ListArray.from_arrays(offsets.astype(np.int32), masked.astype(tok_np),
                                 type=pa.list_(tok)),
        pa.array(segment_b_start.astype(np.uint16)),
        pa.ListArray.from_arrays(pred_offsets.astype(np.int32), positions.astype(np.uint16),
                                 type=pa.list_(pa.uint16())),
        pa.ListArray.from_arrays(pred_offsets.astype(np.int32), original.astype(tok_np),
                                 type=pa.list_(tok)),
        pa.array(is_random.astype(np.int8)),
        pa.array(num_tokens.astype(np.uint16)),
    ]
    if with_starts:
        columns.append(pa.ListArray.from_arrays(offsets.astype(np.int32), inst_word_starts,
                                                type=pa.list_(pa.uint8())))
    return pa.Table.from_arrays(columns, schema=schema)
