"""Which attention kernel a forward pass uses, and the call into it.

`attention_layout` decides once per forward, from the batch and the device, and returns an
`AttentionLayout` that every layer passes to `attend`:

- **SDPA with a boolean mask** (any device; the only choice on CPU). Plain rows use the
  (B, 1, 1, T) padding mask, or no mask at all without padding (then SDPA may pick its flash
  kernel on a GPU); packed rows (`position_ids` given) use the (B, 1, T, T) block-diagonal
  mask of `model.packing`. Attention dropout is BERT's, inside SDPA.
- **Variable-length FlashAttention** (CUDA, fp16/bf16 activations, head size a multiple of 8
  up to 256, and the loader's `cu_seqlens` + `max_seqlen` given). q, k, v stay in the
  (B*T, heads, head_size) layout the Linear layers produce (no transpose, no mask); each
  segment of `cu_seqlens` (a sequence, or a run of padding) attends only to itself, so no
  work crosses a sequence and the quadratic cost is per sequence, not per row. Nothing
  reads a tensor on the host: the boundaries come precomputed from the loader.

What torch 2.13 offers (read from its source, `torch/nn/attention/varlen.py`, and checked
with meta tensors here; no GPU on this machine): `torch.nn.attention.varlen.varlen_attn(q,
k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale, window_size, ...)` is a compile-friendly
custom op over `aten._flash_attention_forward` with `dropout_p` hard-coded to 0.0: it has no
dropout argument. `aten._flash_attention_forward` itself takes `dropout_p`, has an autograd
formula (`_flash_attention_backward` replays the dropout from the saved Philox state) and
is what torch's own nested-tensor SDPA calls in training. `flex_attention` takes a block
mask but no dropout either, and needs compilation per mask pattern; FlashAttention's own
package (`flash_attn_varlen_func`) is not installed. Hence:

- dropout inactive (eval, or `attention_probs_dropout_prob == 0`): `varlen_attn`;
- dropout active (BERT's 0.1 in training): `aten._flash_attention_forward(..., dropout_p)`,
  the same FlashAttention-2 kernel with dropout, so packed GPU training stays exactly BERT
  (dropout on the attention probabilities, scaled by 1/(1-p)) without padding compute;
- anything else (fp32, CPU, no `cu_seqlens`): SDPA with the mask. Set
  `BertEncoder.varlen_attention = False` to force it, e.g. to compare the two on a GPU.

No unpadding (gathering the real tokens so the dense layers skip padding): after packing
little padding is left, and the gather needs the real-token count on the host (a sync, or
one more loader tensor per batch, and a new shape every step for torch.compile). Measured on
CPU (bert-small, seq 128, 64 Wikipedia instances, fwd+bwd): padded 6.9 s, packed 5.0 s,
packed with unpadded dense layers 4.8 s: the 5% left is the packed rows' 9.8% padding.

Never computes a loss and never syncs with the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.packing import block_diagonal_mask, cu_seqlens_from_position_ids

try:  # torch >= 2.10; on older torch the aten op below serves every case
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover
    varlen_attn = None

Tensor = torch.Tensor
VARLEN_DEVICES = ("cuda", "meta")  # meta: the kernels' shape functions, for CPU-side tests
VARLEN_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class AttentionLayout:
    """How the tokens of a (B, T) batch attend; built once per forward by attention_layout."""
    mask: Tensor | None = None
    """(B, 1, 1, T) or (B, 1, T, T) bool for SDPA, True = may attend; None = attend to all"""
    cu_seqlens: Tensor | None = None
    """(N+1,) int32 segment offsets over the B*T grid: set means the varlen kernel runs"""
    max_seqlen: int = 0
    """Longest segment (a Python int: the kernel sizes its grid by it)"""


def varlen_usable(device: torch.device, dtype: torch.dtype, head_size: int) -> bool:
    """Whether the FlashAttention varlen kernel takes this device, dtype and head size."""
    return (device.type in VARLEN_DEVICES and dtype in VARLEN_DTYPES
            and head_size % 8 == 0 and head_size <= 256)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype q, k, v will have: the autocast dtype under autocast, else x's."""
    if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def check_cu_seqlens(cu_seqlens: Tensor, max_seqlen: int, position_ids: Tensor | None,
                     attention_mask: Tensor | None, shape: torch.Size) -> None:
    """Refuse `cu_seqlens` that disagree with the mask and position ids (host tensors only)."""
    if position_ids is None:
        position_ids = torch.arange(shape[1]).expand(shape)
    expected, longest = cu_seqlens_from_position_ids(position_ids.cpu(), None
                                                     if attention_mask is None
                                                     else attention_mask.cpu())
    if not torch.equal(cu_seqlens.cpu().to(torch.int32), expected) or max_seqlen != longest:
        raise ValueError("cu_seqlens / max_seqlen do not match position_ids and "
                         "attention_mask; compute them with "
                         "model.packing.cu_seqlens_from_position_ids")


def attention_layout(x: Tensor, head_size: int, attention_mask: Tensor | None = None,
                     position_ids: Tensor | None = None, cu_seqlens: Tensor | None = None,
                     max_seqlen: int | None = None, allow_varlen: bool = True
                     ) -> AttentionLayout:
    """The layout for embeddings x (B, T, H) of this batch; see the module docstring."""
    if (cu_seqlens is None) != (max_seqlen is None):
        raise ValueError("pass cu_seqlens and max_seqlen together")
    if (cu_seqlens is not None and allow_varlen
            and varlen_usable(x.device, compute_dtype(x), head_size)):
        return AttentionLayout(cu_seqlens=cu_seqlens, max_seqlen=int(max_seqlen))
    if cu_seqlens is not None and cu_seqlens.device.type == "cpu" \
            and not torch.compiler.is_compiling():
        check_cu_seqlens(cu_seqlens, max_seqlen, position_ids, attention_mask, x.shape[:2])
    if position_ids is not None:  # packed rows (or plain ones, said the packed way)
        return AttentionLayout(mask=block_diagonal_mask(position_ids, attention_mask))
    if attention_mask is not None:
        return AttentionLayout(mask=attention_mask[:, None, None, :].bool())
    return AttentionLayout()  # no padding, one sequence per row


def attend(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout, dropout_p: float
           ) -> Tensor:
    """Multi-head attention of q, k, v (B, T, heads, head_size) -> (B, T, heads*head_size).

    dropout_p: the attention-probability dropout to apply now (0.0 in eval).
    """
    B, T, nh, hs = q.shape
    if layout.cu_seqlens is None:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))              # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, dropout_p=dropout_p)
        return y.transpose(1, 2).reshape(B, T, nh * hs)               # heads side by side
    q, k, v = (t.reshape(B * T, nh, hs) for t in (q, k, v))          # (B*T, nh, hs), views
    cu, n = layout.cu_seqlens, layout.max_seqlen
    if dropout_p == 0.0 and varlen_attn is not None:
        y = varlen_attn(q, k, v, cu, cu, n, n)
    else:  # the FlashAttention-2 op varlen_attn wraps, with its dropout_p (see docstring)
        y = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, n, n, dropout_p,
                                                    False, False)[0]
    return y.reshape(B, T, nh * hs)


__all__ = ["AttentionLayout", "attention_layout", "attend", "varlen_usable", "compute_dtype",
           "check_cu_seqlens"]
