"""Word starts, the masking interface: per-token flags that say where a whole-word masking
group begins, carried from pass 1 through the instance builder into `mask_batch`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import PrepareConfig
from pipeline.instances import create_block_instances_flat, flatten_documents
from pipeline.masking import mask_batch, word_starts_from_pieces
from pipeline.schema import SPECIAL_TOKENS
from pipeline.shards import build_block, tokenize_file
from pipeline.tokenizer import VocabInfo

# Toy vocab: specials, words w0..w199, continuations ##c0..##c99.
TOY = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(200)] + [f"##c{i}" for i in range(100)]
INFO = VocabInfo.from_vocab(TOY)
WWM = PrepareConfig(do_whole_word_mask=True)

# Id-per-position corpus: ids run consecutively over the corpus, so an unmasked id says where
# in the corpus a token came from (and so which source group it belongs to).
SEQ_VOCAB = list(SPECIAL_TOKENS) + [f"t{i}" for i in range(40000)]
SEQ = VocabInfo.from_vocab(SEQ_VOCAB)


def _pieces_batch(rng, rows=3000):
    """[CLS] body [SEP] body [SEP] rows; ~40% of the body tokens are "##" pieces."""
    out = []
    for n in rng.integers(10, 129, rows):
        body = np.where(rng.random(n - 3) < 0.4, rng.integers(205, 305, n - 3),
                        rng.integers(5, 205, n - 3))
        half = (n - 3) // 2
        out.append(np.concatenate([[INFO.cls_id], body[:half], [INFO.sep_id], body[half:],
                                   [INFO.sep_id]]).astype(np.int32))
    return np.concatenate(out), np.concatenate([[0], np.cumsum([len(t) for t in out])])


def test_word_starts_from_pieces_flag_every_token_but_continuations():
    tokens = np.array([INFO.cls_id, 5, 205, 206, 6, INFO.sep_id])
    assert word_starts_from_pieces(tokens, INFO).tolist() == [1, 1, 0, 0, 1, 1]
    assert word_starts_from_pieces(tokens, INFO).dtype == np.uint8


def test_starts_equal_to_the_piece_rule_give_identical_masks():
    tokens, offsets = _pieces_batch(np.random.default_rng(0))
    starts = word_starts_from_pieces(tokens, INFO)
    a = mask_batch(tokens, offsets, np.random.default_rng(7), WWM, INFO)
    b = mask_batch(tokens, offsets, np.random.default_rng(7), WWM, INFO, word_starts=starts)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


def test_starts_are_ignored_without_whole_word_masking():
    tokens, offsets = _pieces_batch(np.random.default_rng(1), rows=500)
    starts = np.zeros(len(tokens), np.uint8)          # one giant group, if it were used
    cfg = PrepareConfig()
    a = mask_batch(tokens, offsets, np.random.default_rng(3), cfg, INFO)
    b = mask_batch(tokens, offsets, np.random.default_rng(3), cfg, INFO, word_starts=starts)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


def _chosen_per_row(positions, pred_offsets, offsets):
    rows = []
    for r in range(len(offsets) - 1):
        c = np.zeros(offsets[r + 1] - offsets[r], bool)
        c[positions[pred_offsets[r]:pred_offsets[r + 1]]] = True
        rows.append(c)
    return rows


def test_given_groups_are_masked_whole_within_googles_budget():
    # Groups of 1-4 tokens (like Chinese words of 1-4 characters) that "##" knows nothing
    # about: every token is a plain word, the flags alone define the groups.
    rng = np.random.default_rng(2)
    lengths = rng.integers(20, 129, 4000)
    tokens = np.concatenate([np.concatenate([[INFO.cls_id], rng.integers(5, 205, n - 2),
                                             [INFO.sep_id]]) for n in lengths]).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    starts = np.zeros(len(tokens), np.uint8)
    pos = 0
    while pos < len(tokens):
        starts[pos] = 1
        pos += int(rng.integers(1, 5))
    group = np.cumsum(starts)
    masked, positions, original, pred_offsets = mask_batch(
        tokens, offsets, np.random.default_rng(9), WWM, INFO, word_starts=starts)
    total = 0
    for r, chosen in enumerate(_chosen_per_row(positions, pred_offsets, offsets)):
        g = group[offsets[r]:offsets[r + 1]]
        body = np.arange(1, len(chosen) - 1)
        same = body[:-1][g[body[:-1]] == g[body[1:]]]   # adjacent body tokens of one group
        assert (chosen[same] == chosen[same + 1]).all()
        k = min(20, max(1, round(len(chosen) * 0.15)))
        assert 0 < chosen.sum() <= k
        total += chosen.sum()
    # groups of up to 4 rarely leave the greedy fill more than a token short of k
    budget = sum(min(20, max(1, round(n * 0.15))) for n in lengths)
    assert total / budget > 0.95
    now = masked[offsets[np.repeat(np.arange(len(lengths)), np.diff(pred_offsets))] + positions]
    assert abs((now == INFO.mask_id).mean() - 0.8) < 0.02


def test_a_group_cut_by_a_separator_or_truncation_starts_again_after_it():
    # [CLS] a b [SEP] c d [SEP]: flags say "one group" everywhere after a; the [SEP] splits it.
    tokens = np.array([INFO.cls_id, 5, 6, INFO.sep_id, 7, 8, INFO.sep_id], np.int32)
    starts = np.array([1, 1, 0, 0, 0, 0, 1], np.uint8)
    cfg = dataclasses.replace(WWM, masked_lm_prob=0.3)   # k = 2: one group of two
    seen = set()
    for seed in range(50):
        _, positions, _, _ = mask_batch(tokens, np.array([0, 7]), np.random.default_rng(seed),
                                        cfg, INFO, word_starts=starts)
        seen.add(tuple(positions.tolist()))
    assert seen == {(1, 2), (4, 5)}


def _seq_documents(rng, num_docs=60):
    docs, next_id = [], 5
    for _ in range(num_docs):
        doc = []
        for _ in range(int(rng.integers(1, 12))):
            n = int(rng.integers(1, 40))
            doc.append(np.arange(next_id, next_id + n, dtype=np.int32))
            next_id += n
        docs.append(doc)
    return docs


def test_instances_carry_the_source_groups_into_the_masks():
    rng = np.random.default_rng(4)
    ids, sent_lens, per_doc = flatten_documents(_seq_documents(rng))
    starts = (rng.random(len(ids)) < 0.4).astype(np.uint8)
    starts[np.concatenate([[0], np.cumsum(sent_lens)[:-1]])] = 1   # sentences start words
    group_of = np.zeros(SEQ.size, np.int64)
    group_of[ids] = np.cumsum(starts)
    cfg = dataclasses.replace(WWM, max_seq_length=64, dupe_factor=3)
    table = create_block_instances_flat(ids, sent_lens, per_doc, cfg, SEQ, 1, 0, starts)
    multi = 0
    for row in table.to_pylist():
        orig = np.array(row["input_ids"])
        orig[row["masked_lm_positions"]] = row["masked_lm_ids"]
        chosen = np.zeros(len(orig), bool)
        chosen[row["masked_lm_positions"]] = True
        g = group_of[orig]
        body = ~np.isin(orig, SEQ.special_ids)
        pair = body[:-1] & body[1:] & (g[:-1] == g[1:])
        assert (chosen[:-1][pair] == chosen[1:][pair]).all()
        multi += int((chosen[:-1] & pair).sum())
    assert multi > 100                                   # multi-token groups were chosen


def test_instances_with_piece_starts_equal_instances_without_starts():
    rng = np.random.default_rng(5)
    docs = [[np.where(rng.random(n) < 0.3, rng.integers(205, 305, n),
                      rng.integers(5, 205, n)).astype(np.int32)
             for n in rng.integers(1, 30, int(rng.integers(1, 10)))] for _ in range(80)]
    ids, sent_lens, per_doc = flatten_documents(docs)
    a = create_block_instances_flat(ids, sent_lens, per_doc, WWM, INFO, 3, 1)
    b = create_block_instances_flat(ids, sent_lens, per_doc, WWM, INFO, 3, 1,
                                    word_starts_from_pieces(ids, INFO))
    assert a.equals(b)


def _toy_corpus(tmp_path):
    lines = []
    rng = np.random.default_rng(6)
    for _ in range(40):
        for _ in range(int(rng.integers(2, 8))):
            words = [f"w{rng.integers(0, 200)}" + ("c%d" % rng.integers(0, 100)
                                                    if rng.random() < 0.3 else "")
                     for _ in range(int(rng.integers(3, 25)))]
            lines.append(" ".join(words))
        lines.append("")
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pass_one_stores_word_starts_only_for_whole_word_masking_and_pass_two_uses_them(
        tmp_path):
    corpus = _toy_corpus(tmp_path)
    outputs = {}
    for wwm in (False, True):
        cfg = PrepareConfig(input=[str(corpus)], format="bert", do_whole_word_mask=wwm,
                            dupe_factor=2, max_seq_length=32)
        work = str(tmp_path / f"work-{wwm}")
        tokenize_file(0, str(corpus), cfg, TOY, 1, work)
        piece = pa.ipc.open_file(f"{work}/tokens/block-00000/file-000000-00000.arrow").read_all()
        assert ("word_starts" in piece.column_names) == wwm
        if wwm:
            ids = piece.column("ids").combine_chunks().values.to_numpy()
            starts = piece.column("word_starts").combine_chunks().values.to_numpy()
            assert (starts == word_starts_from_pieces(ids, INFO)).all()
            assert (starts == 0).any()
        build_block(0, cfg, INFO, work)
        outputs[wwm] = pa.concat_tables(pa.ipc.open_file(str(f)).read_all()
                                        for f in sorted(Path(work).glob("instances/*/*.arrow")))
    # pass 2 of the whole-word job masks "##" groups whole
    for row in outputs[True].to_pylist():
        chosen = np.zeros(len(row["input_ids"]), bool)
        chosen[row["masked_lm_positions"]] = True
        orig = np.array(row["input_ids"])
        orig[row["masked_lm_positions"]] = row["masked_lm_ids"]
        cont = INFO.is_subword[orig][1:] & ~np.isin(orig[:-1], INFO.special_ids)
        assert (chosen[1:][cont] == chosen[:-1][cont]).all()
