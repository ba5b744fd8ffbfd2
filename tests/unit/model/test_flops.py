"""MFU's numerator: model FLOPs of real tokens, per sequence, against torch's own counter."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model import BertConfig, BertForPreTraining
from model.flops import pretraining_flops, pretraining_flops_per_token
from tests.unit.model.packed_data import make_sequences, unpacked

LARGE = BertConfig.from_preset("bert-large")


def test_flops_of_sequences_match_torchs_counter_of_each_sequence_run_alone():
    # big enough that biases and LayerNorms (counted here, not by torch) stay under 1%
    cfg = BertConfig(vocab_size=99, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=64)
    torch.manual_seed(0)
    m = BertForPreTraining(cfg)
    seqs = make_sequences(lengths=(40, 12, 25))
    counted = 0
    for s in seqs:  # alone: no padding, so the counter sees real tokens only
        inputs = {k: v for k, v in unpacked([s]).items() if k != "attention_mask"}
        # the math backend is plain matmuls, which the counter sees (CPU flash it does not)
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            m(**inputs).loss.backward()
        counted += counter.get_total_flops()
    ours = pretraining_flops(cfg, [len(s.ids) for s in seqs], sum(len(s.mlm_pos) for s in seqs))
    assert ours == pytest.approx(counted, rel=0.01)


def test_attention_flops_are_quadratic_per_sequence_not_per_row():
    one_long = pretraining_flops(LARGE, [512], 80)
    four_short = pretraining_flops(LARGE, [128] * 4, 80)  # the same 512 tokens, packed
    H, L = LARGE.hidden_size, LARGE.num_hidden_layers
    per_sequence_heads = 3 * 6 * (H * H + 2 * H)  # three more poolers + NSP heads
    assert one_long - four_short == 12 * L * H * (512 ** 2 - 4 * 128 ** 2) - per_sequence_heads


def test_per_token_flops_are_one_sequence_of_the_batch_helper():
    assert pretraining_flops_per_token(LARGE, 128, 20) * 128 == pretraining_flops(LARGE, [128],
                                                                                  20)
    assert pretraining_flops(LARGE, [], 0) == 0.0


def test_flops_take_numpy_lengths():
    np = pytest.importorskip("numpy")
    assert pretraining_flops(LARGE, np.array([100, 28]), 20) == pretraining_flops(
        LARGE, [100, 28], 20)
