"""The BERT encoder (Devlin et al., 2018): embeddings, post-LN transformer layers, pooler.

Module and parameter names are those of transformers' `modeling_bert.py`
(`embeddings.word_embeddings`, `encoder.layer.0.attention.self.query`, ...), so HF
checkpoints are a plain state-dict copy. Rows may be packed: several sequences back to back,
marked by `position_ids` restarting at 0 (see `packing.py`); attention then stays inside each
sequence. `attention.py` picks the kernel (SDPA with a mask, or variable-length
FlashAttention on CUDA). Heads live in `pretraining.py` and `tasks.py`; this file never
computes a loss and never imports transformers.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.attention import AttentionLayout, attend, attention_layout
from model.config import BertConfig
from model.outputs import BaseModelOutput

ACT_FN = {
    "gelu": F.gelu,  # exact (erf) GELU, as BERT and HF's "gelu"
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),  # partial, not lambda: picklable
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class BertEmbeddings(nn.Module):
    """word + segment + learned position embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                            padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        T = x.size(1)
        if token_type_ids is None:
            token_type_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device)  # (T,), broadcast over the batch
        # same summation order as HF, so fp32 outputs agree to the last bits
        x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x, layout: AttentionLayout):
        B, T, H = x.shape  # x (B, T, H)
        hs = H // self.n_head
        # call the Linear modules (not their weights): ZeRO-3 gathers a module's parameters
        # only when that module runs
        q = self.query(x).view(B, T, self.n_head, hs)  # (B, T, nh, hs)
        k = self.key(x).view(B, T, self.n_head, hs)
        v = self.value(x).view(B, T, self.n_head, hs)
        return attend(q, k, v, layout, self.dropout_p if self.training else 0.0)  # (B, T, H)


class BertResidualNorm(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual): the post-LN end of both sublayers.

    HF calls it BertSelfOutput (attention.output) and BertOutput (output); names match.
    """

    def __init__(self, cfg: BertConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)  # HF's name: attention.self.query ...
        self.output = BertResidualNorm(cfg, cfg.hidden_size)

    def forward(self, x, layout):
        return self.output(self.self(x, layout), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACT_FN[cfg.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))  # (B, T, I)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidualNorm(cfg, cfg.intermediate_size)

    def forward(self, x, layout):
        x = self.attention(x, layout)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.varlen_attention = True  # False: SDPA with a mask even where varlen could run

    def forward(self, x, layout, output_hidden_states=False):
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layer:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, layout, use_reentrant=False)  # recompute in backward
            else:
                x = layer(x, layout)
            if hidden_states is not None:
                hidden_states.append(x)
        return x, hidden_states


class BertPooler(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x, cls_positions=None):
        if cls_positions is None:
            return torch.tanh(self.dense(x[:, 0]))  # (B, H) from [CLS]
        # packed rows: every sequence's [CLS]; padding entries (e.g. -1) read position 0
        index = cls_positions.long().clamp(min=0).unsqueeze(-1).expand(-1, -1, x.size(-1))
        return torch.tanh(self.dense(x.gather(1, index)))  # (B, S, H)


@torch.no_grad()
def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialization of one module: weights ~ N(0, std), biases 0, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()


class BertPreTrainedModel(nn.Module):
    """What every BERT class shares: the config, initialization, gradient checkpointing."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config

    def init_weights(self, module: nn.Module | None = None) -> None:
        module = self if module is None else module
        module.apply(functools.partial(init_bert_weights, std=self.config.initializer_range))
        with torch.no_grad():  # [PAD] row 0, after the apply: a tied decoder re-fills it
            for m in module.modules():
                if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer in backward: activations of one layer instead of all L."""
        for m in self.modules():
            if isinstance(m, BertEncoder):
                m.gradient_checkpointing = True

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights count once

    def set_dropout(self, p: float) -> None:
        """Train with dropout p on hidden states and attention probabilities (Cramming trains
        without: 0.0). The config keeps its own rates: a saved model says BERT's dropout,
        which is what fine-tuning it should use."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
            elif isinstance(m, BertSelfAttention):
                m.dropout_p = p


class BertModel(BertPreTrainedModel):
    """The bare encoder: `last_hidden_state` (B, T, H) and `pooler_output` (B, H).

    Packed rows: `position_ids` (B, T) restart at 0 at each sequence start; `cls_positions`
    (B, S) (padded with -1) makes `pooler_output` (B, S, H), one per sequence. `cu_seqlens`
    (N+1,) int32 and `max_seqlen` (int): the segments of the flattened grid as
    `model.packing.cu_seqlens_from_position_ids` computes them, precomputed by the loader so
    that the CUDA varlen kernel needs no host sync (checked against the mask on CPU).
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states=False, return_dict=True,
                cu_seqlens=None, max_seqlen=None, cls_positions=None):
        # input_ids, attention_mask (1 = token, 0 = pad), token_type_ids, position_ids: (B, T)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, T, H)
        # no mask at all (no padding) lets SDPA pick its flash kernel on a GPU
        layout = attention_layout(x, self.config.hidden_size // self.config.num_attention_heads,
                                  attention_mask, position_ids, cu_seqlens, max_seqlen,
                                  allow_varlen=self.encoder.varlen_attention)
        x, hidden_states = self.encoder(x, layout, output_hidden_states)
        pooled = self.pooler(x, cls_positions) if self.pooler is not None else None
        out = BaseModelOutput(last_hidden_state=x, pooler_output=pooled,
                              hidden_states=tuple(hidden_states) if hidden_states else None)
        return out if return_dict else out.to_tuple()
