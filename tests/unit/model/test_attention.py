"""Packed-row index maps and the attention kernel choice, checked on CPU.

The CUDA varlen kernel cannot run here; what can is checked: its segment offsets describe
the same attention as the SDPA mask (a per-segment reference on CPU), the choice of kernel,
and the calls into it on meta tensors (the kernels' own shape functions, forward and
backward), whole model included.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model import BertForPreTraining
from model.attention import AttentionLayout, attend, attention_layout, varlen_usable
from model.packing import (
    block_diagonal_mask,
    cu_seqlens_from_position_ids,
    sequence_index,
    sequence_lengths,
)
from tests.unit.model.packed_data import make_sequences, packed, tiny_config

# two rows of T = 8: row 0 = sequences of 3 and 4 tokens + 1 pad; row 1 = 5 tokens + 3 pads
POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0, 0]])


def test_sequence_index_numbers_sequences_per_row_and_zeroes_padding():
    assert sequence_index(POSITIONS, MASK).tolist() == [[1, 1, 1, 2, 2, 2, 2, 0],
                                                        [1, 1, 1, 1, 1, 0, 0, 0]]


def test_block_diagonal_mask_keeps_sequences_apart_and_padding_out():
    m = block_diagonal_mask(POSITIONS, MASK)[:, 0]  # (B, T, T)
    assert m.shape == (2, 8, 8)
    assert m[0, 0, :3].all() and not m[0, 0, 3:].any()      # seq 1 sees seq 1 only
    assert m[0, 4, 3:7].all() and not m[0, 4, :3].any() and not m[0, 4, 7]
    assert torch.equal(m[0, 7], MASK[0].bool())              # a pad query: every real key
    assert torch.equal(m[1, 6], MASK[1].bool())


def test_plain_position_ids_give_the_padding_mask_of_an_unpacked_batch():
    positions = torch.arange(8).expand(2, 8)
    assert torch.equal(block_diagonal_mask(positions, MASK),
                       MASK[:, None, None, :].bool().expand(2, 1, 8, 8))


def test_cu_seqlens_cover_the_grid_with_sequences_and_padding_runs():
    cu, longest = cu_seqlens_from_position_ids(POSITIONS, MASK)
    assert cu.dtype == torch.int32
    # row 0: [0,3) [3,7) pad [7,8); row 1: [8,13) pads [13,16)
    assert cu.tolist() == [0, 3, 7, 8, 13, 16] and longest == 5
    cu, longest = cu_seqlens_from_position_ids(torch.arange(4).expand(3, 4))  # no padding
    assert cu.tolist() == [0, 4, 8, 12] and longest == 4


def test_sequence_lengths_are_the_real_sequences_only():
    assert sequence_lengths(POSITIONS, MASK).tolist() == [3, 4, 5]
    pack, _ = packed(make_sequences(lengths=(4, 9, 2, 6)), rows=((0, 1), (2, 3)))
    assert sequence_lengths(pack["position_ids"], pack["attention_mask"]).tolist() == [4, 9,
                                                                                        2, 6]


def reference_varlen(q, k, v, cu):
    """What a varlen kernel computes, one segment at a time: q, k, v (total, nh, hs)."""
    out = torch.empty_like(q)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        seg = [t[a:b].transpose(0, 1) for t in (q, k, v)]  # (nh, n, hs)
        out[a:b] = F.scaled_dot_product_attention(*seg).transpose(0, 1)
    return out


def test_varlen_segments_and_the_sdpa_mask_give_the_same_attention_on_real_tokens():
    B, T, nh, hs = 2, 8, 2, 4
    q, k, v = (torch.randn(B, T, nh, hs) for _ in range(3))
    masked = attend(q, k, v, AttentionLayout(mask=block_diagonal_mask(POSITIONS, MASK)), 0.0)
    cu, _ = cu_seqlens_from_position_ids(POSITIONS, MASK)
    segments = reference_varlen(*(t.reshape(B * T, nh, hs) for t in (q, k, v)), cu)
    real = MASK.bool()
    torch.testing.assert_close(segments.view(B, T, nh * hs)[real], masked[real],
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device,dtype,hs,expected", [
    ("cuda", torch.bfloat16, 64, True), ("cuda", torch.float16, 128, True),
    ("cuda", torch.float32, 64, False), ("cpu", torch.bfloat16, 64, False),
    ("cuda", torch.bfloat16, 12, False), ("cuda", torch.bfloat16, 512, False)])
def test_varlen_kernel_is_chosen_for_cuda_half_precision_and_flash_head_sizes(device, dtype,
                                                                                 hs, expected):
    assert varlen_usable(torch.device(device), dtype, hs) is expected


def test_cpu_takes_sdpa_with_the_block_mask_even_when_given_cu_seqlens():
    pack, _ = packed(make_sequences())
    x = torch.zeros(*pack["input_ids"].shape, 32)
    layout = attention_layout(x, 8, pack["attention_mask"], pack["position_ids"],
                              pack["cu_seqlens"], pack["max_seqlen"])
    assert layout.cu_seqlens is None and layout.mask.shape == (3, 1, x.size(1), x.size(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 on CPU: still no varlen
        assert attention_layout(x, 8, cu_seqlens=pack["cu_seqlens"],
                                max_seqlen=pack["max_seqlen"],
                                position_ids=pack["position_ids"],
                                attention_mask=pack["attention_mask"]).cu_seqlens is None


def test_cu_seqlens_that_disagree_with_the_position_ids_are_refused_on_cpu():
    m = BertForPreTraining(tiny_config()).eval()
    pack, _ = packed(make_sequences())
    cu = pack["cu_seqlens"].clone()
    cu[1] += 1
    with pytest.raises(ValueError, match="cu_seqlens_from_position_ids"):
        m(**{**pack, "cu_seqlens": cu})
    with pytest.raises(ValueError, match="together"):
        m(**{k: v for k, v in pack.items() if k != "max_seqlen"})


class OpLog(TorchDispatchMode):
    """Records the name and dropout argument of every attention op that runs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if "attention" in name or "varlen" in name:
            dropout = args[7] if "_flash_attention_forward" in name else None
            self.calls.append((name, dropout))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train,op,dropout", [
    (False, "torch_attn._varlen_attn", None),  # eval: torch's public varlen_attn
    (True, "aten._flash_attention_forward", 0.1),  # training: the op with BERT's dropout
])
def test_bf16_packed_pretraining_on_meta_runs_the_varlen_kernel_forward_and_backward(
        train, op, dropout):
    pack, _ = packed(make_sequences())
    with torch.device("meta"):
        m = BertForPreTraining(tiny_config(hidden_size=64, intermediate_size=64,
                                           attention_probs_dropout_prob=0.1))
    m = m.to(torch.bfloat16).train(train)
    inputs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in pack.items()}
    log = OpLog()
    with log:
        out = m(**inputs)
        out.loss.backward()
    forward_ops = [c for c in log.calls if "backward" not in c[0]]
    assert forward_ops == [(op, dropout)] * 2  # both layers; no SDPA, no mask
    assert any("backward" in c[0] for c in log.calls)
    assert out.prediction_logits.shape == (*pack["masked_lm_positions"].shape, 99)
    assert m.bert.encoder.layer[0].attention.self.query.weight.grad.shape == (64, 64)


def test_varlen_can_be_switched_off_for_comparisons():
    x = torch.zeros(2, 8, 64, device="meta", dtype=torch.bfloat16)
    cu, n = cu_seqlens_from_position_ids(POSITIONS, MASK)
    on = attention_layout(x, 64, MASK.to("meta"), POSITIONS.to("meta"), cu.to("meta"), n)
    off = attention_layout(x, 64, MASK.to("meta"), POSITIONS.to("meta"), cu.to("meta"), n,
                           allow_varlen=False)
    assert on.cu_seqlens is not None and on.mask is None
    assert off.cu_seqlens is None and off.mask.shape == (2, 1, 8, 8)
