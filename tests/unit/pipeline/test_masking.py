"""Masked-LM predictions (pipeline/masking.py): Google's rules, vectorized over instances."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.config import PrepareConfig
from pipeline.masking import mask_batch, mask_tokens
from pipeline.schema import SPECIAL_TOKENS
from pipeline.tokenizer import VocabInfo, build_tokenizer, encode_sentences, load_vocab

# A toy vocab: specials, 200 words w0..w199, 100 continuations ##c0..##c99.
TOY = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(200)] + [f"##c{i}" for i in range(100)]
INFO = VocabInfo.from_vocab(TOY)
CLS, SEP, MASK, UNK, PAD = INFO.cls_id, INFO.sep_id, INFO.mask_id, INFO.unk_id, INFO.pad_id
WORDS = np.arange(5, 205)
PIECES = np.arange(205, 305)
CFG = PrepareConfig()


def _instance(rng, n, piece_prob=0.0):
    """[CLS] body [SEP] body [SEP] of n tokens; with piece_prob, some tokens are ## pieces."""
    body = rng.choice(WORDS, n - 3)
    if piece_prob:
        body = np.where(rng.random(n - 3) < piece_prob, rng.choice(PIECES, n - 3), body)
        body[0] = WORDS[0]
    half = (n - 3) // 2
    return np.concatenate([[CLS], body[:half], [SEP], body[half:], [SEP]]).astype(np.int32)


def _batch(instances):
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in instances])])
    return np.concatenate(instances), offsets


@pytest.mark.parametrize("n, expected", [
    (8, 1), (10, 2), (30, 4), (50, 8), (70, 10), (128, 19), (200, 20), (4, 1)])
def test_num_to_predict_is_googles_rounding_capped_at_max_predictions(n, expected):
    # round(len * 0.15) with Python's half-even rounding: 10 -> 1.5 -> 2, 30 -> 4.5 -> 4,
    # 50 -> 7.5 -> 8, 70 -> 10.5 -> 10; at least 1; at most max_predictions_per_seq (20).
    rng = np.random.default_rng(0)
    _, positions, _ = mask_tokens(_instance(rng, n), rng, CFG, INFO)
    assert len(positions) == expected


def test_masking_never_touches_special_tokens():
    rng = np.random.default_rng(1)
    tokens = _instance(rng, 60)
    tokens[5:25] = [UNK, PAD, MASK, CLS, SEP] * 4       # specials inside the text, too
    for seed in range(200):
        masked, positions, original = mask_tokens(tokens, np.random.default_rng(seed), CFG, INFO)
        assert not np.isin(original, INFO.special_ids).any()
        keep = np.ones(len(tokens), bool)
        keep[positions] = False
        assert (masked[keep] == tokens[keep]).all()     # only chosen positions change
        assert not np.isin(masked[positions], [UNK, PAD, CLS, SEP]).any()


def test_an_instance_with_fewer_candidates_than_num_to_predict_masks_all_of_them():
    tokens = np.array([CLS, 7, SEP, 8, 9, SEP] + [PAD] * 30, dtype=np.int32)  # k = 5 > 3
    _, positions, original = mask_tokens(tokens, np.random.default_rng(0), CFG, INFO)
    assert positions.tolist() == [1, 3, 4] and original.tolist() == [7, 8, 9]
    _, positions, _ = mask_tokens(np.array([CLS, SEP]), np.random.default_rng(0), CFG, INFO)
    assert len(positions) == 0


def test_batch_positions_are_ascending_unique_and_ids_are_the_originals():
    rng = np.random.default_rng(2)
    instances = [_instance(rng, int(n)) for n in rng.integers(8, 129, 5000)]
    tokens, offsets = _batch(instances)
    masked, positions, original, pred_offsets = mask_batch(tokens, offsets, rng, CFG, INFO)
    assert masked.shape == tokens.shape and pred_offsets[-1] == len(positions)
    for r, inst in enumerate(instances):
        pos = positions[pred_offsets[r]:pred_offsets[r + 1]]
        assert (np.diff(pos) > 0).all() and pos.max() < len(inst)
        assert (original[pred_offsets[r]:pred_offsets[r + 1]] == inst[pos]).all()
        k = min(20, max(1, round(len(inst) * 0.15)))
        assert len(pos) == k


def test_chosen_tokens_are_80_percent_mask_10_random_10_unchanged():
    rng = np.random.default_rng(3)
    instances = [_instance(rng, 128) for _ in range(3000)]       # 57,000 predictions
    tokens, offsets = _batch(instances)
    masked, positions, original, _ = mask_batch(tokens, offsets, rng, CFG, INFO)
    rows = np.repeat(np.arange(len(instances)), 19)
    now = masked[offsets[rows] + positions]
    is_mask, same = now == MASK, now == original
    assert abs(is_mask.mean() - 0.8) < 0.01
    assert abs(same.mean() - 0.1) < 0.01            # (a random token equal by chance: 0.5%)
    assert abs((~is_mask & ~same).mean() - 0.1) < 0.01
    assert np.isin(now[~is_mask & ~same], INFO.random_ids).all()


def test_every_candidate_position_is_equally_likely_to_be_chosen():
    rng = np.random.default_rng(4)
    tokens = _instance(rng, 40)                       # k = 6 of 37 candidates
    counts = np.zeros(40)
    batch = np.tile(tokens, 4000)
    offsets = np.arange(4001) * 40
    _, positions, _, _ = mask_batch(batch, offsets, rng, CFG, INFO)
    np.add.at(counts, positions, 1)
    cand = counts[~np.isin(tokens, INFO.special_ids)]
    expected = 4000 * 6 / 37
    assert np.abs(cand - expected).max() < 5 * np.sqrt(expected)   # 5 sigma
    assert counts[np.isin(tokens, INFO.special_ids)].sum() == 0


def test_whole_word_masking_masks_all_pieces_of_a_word_and_never_exceeds_the_budget():
    cfg = dataclasses.replace(CFG, do_whole_word_mask=True)
    rng = np.random.default_rng(5)
    instances = [_instance(rng, int(n), piece_prob=0.4) for n in rng.integers(10, 129, 3000)]
    tokens, offsets = _batch(instances)
    _, positions, _, pred_offsets = mask_batch(tokens, offsets, rng, cfg, INFO)
    for r, inst in enumerate(instances):
        chosen = np.zeros(len(inst), bool)
        chosen[positions[pred_offsets[r]:pred_offsets[r + 1]]] = True
        k = min(20, max(1, round(len(inst) * 0.15)))
        assert 0 < chosen.sum() <= k
        piece = INFO.is_subword[inst] & ~np.isin(inst, INFO.special_ids)
        # a "##" piece after a candidate is chosen exactly when the token before it is
        follows = piece[1:] & ~np.isin(inst[:-1], INFO.special_ids)
        assert (chosen[1:][follows] == chosen[:-1][follows]).all()


def test_whole_word_masking_keeps_words_whole_on_real_wordpieces(bert_vocab):
    vocab = load_vocab(bert_vocab)
    info = VocabInfo.from_vocab(vocab)
    cfg = dataclasses.replace(CFG, do_whole_word_mask=True)
    text = ("Photosynthesis transforms electromagnetic radiation into biochemical energy. "
            "Unbelievably, chlorophyll-containing organisms proliferate ubiquitously.")
    ids, _ = encode_sentences(build_tokenizer(vocab, True), [text])
    tokens = np.concatenate([[info.cls_id], ids, [info.sep_id]]).astype(np.int32)
    words_seen = set()
    for seed in range(300):
        _, positions, _ = mask_tokens(tokens, np.random.default_rng(seed), cfg, info)
        chosen = np.zeros(len(tokens), bool)
        chosen[positions] = True
        for p in range(1, len(tokens) - 1):
            if info.is_subword[tokens[p]]:
                assert chosen[p] == chosen[p - 1], (seed, vocab[tokens[p - 1]], vocab[tokens[p]])
        words_seen.update(vocab[tokens[p]] for p in positions)
    assert any(t.startswith("##") for t in words_seen)   # multi-piece words do get chosen


def test_masking_is_deterministic_for_a_seed_and_differs_across_seeds():
    rng = np.random.default_rng(6)
    tokens, offsets = _batch([_instance(rng, 100) for _ in range(50)])
    a = mask_batch(tokens, offsets, np.random.default_rng(42), CFG, INFO)
    b = mask_batch(tokens, offsets, np.random.default_rng(42), CFG, INFO)
    c = mask_batch(tokens, offsets, np.random.default_rng(43), CFG, INFO)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[1] == c[1]).all()
