"""Parameter and FLOP counts of BERT from its config alone (no model is built).

For MFU: the model FLOPs of one pretraining token, forward and backward, as the design
counts them: 6 x encoder parameters (2 forward, 4 backward, per multiply-add), attention
scores and weighted sums (12 L H T per token), and the MLM head at masked positions only.
Embedding lookups count zero. Pure arithmetic: never touches torch or a device.
"""
from __future__ import annotations

from model.config import BertConfig


def layer_params(cfg: BertConfig) -> int:
    """One encoder layer: q, k, v, attention output, FFN in and out, two LayerNorms."""
    H, inner = cfg.hidden_size, cfg.intermediate_size
    return 4 * (H * H + H) + (H * inner + inner) + (inner * H + H) + 2 * 2 * H


def embedding_params(cfg: BertConfig) -> int:
    H = cfg.hidden_size
    return (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * H + 2 * H


def pooler_params(cfg: BertConfig) -> int:
    return cfg.hidden_size * cfg.hidden_size + cfg.hidden_size


def mlm_head_params(cfg: BertConfig) -> int:
    """Transform (dense + LayerNorm) and the output bias; the decoder weight is the embedding."""
    H = cfg.hidden_size
    return H * H + H + 2 * H + cfg.vocab_size


def nsp_head_params(cfg: BertConfig) -> int:
    return 2 * cfg.hidden_size + 2


def bert_model_params(cfg: BertConfig, pooler: bool = True) -> int:
    """Parameters of `BertModel` (what `sum(p.numel())` gives)."""
    return (embedding_params(cfg) + cfg.num_hidden_layers * layer_params(cfg)
            + (pooler_params(cfg) if pooler else 0))


def pretraining_params(cfg: BertConfig) -> int:
    """Parameters of `BertForPreTraining` (decoder tied, counted once)."""
    return bert_model_params(cfg) + mlm_head_params(cfg) + nsp_head_params(cfg)


def pretraining_flops_per_token(cfg: BertConfig, seq_len: int, max_predictions: int) -> float:
    """Training FLOPs (forward + backward) per token of a (seq_len)-token sequence with
    `max_predictions` MLM positions; ~1.9e9 for bert-large at seq 128 with 20 predictions."""
    L, H, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    encoder = 6 * L * layer_params(cfg)
    attention = 12 * L * H * seq_len  # QK^T and AV: 2 * 2 * T * H forward, x3 with backward
    mlm = 6 * (H * H + H * V) * max_predictions / seq_len  # transform + decoder, masked only
    per_sequence = 6 * (H * H + 2 * H) / seq_len  # pooler + NSP, once per sequence
    return encoder + attention + mlm + per_sequence
