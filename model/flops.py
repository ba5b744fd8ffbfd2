"""Parameter and FLOP counts of BERT from its config alone (no model is built).

For MFU: the model FLOPs of pretraining, forward and backward, as the design counts them:
6 x encoder parameters per token (2 forward, 4 backward, per multiply-add), attention
scores and weighted sums (12 L H n^2 per sequence of n tokens: quadratic per *sequence*, so
a packed row of several sequences costs less than one sequence of the row's length), the
MLM head at masked positions only, pooler + NSP once per sequence. Only real tokens count:
padding is wasted work, not model FLOPs. Embedding lookups count zero. Pure arithmetic:
never touches torch or a device.
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


def pretraining_flops(cfg: BertConfig, seq_lens, num_predictions: int) -> float:
    """Training FLOPs (forward + backward) of a batch of real sequences, whatever the rows.

    seq_lens: the real length of every sequence (an iterable of ints, e.g. a list or a numpy
    array; padding excluded); num_predictions: the real MLM targets of the whole batch.
    """
    L, H, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    lens = [int(n) for n in seq_lens]
    tokens, squares = sum(lens), sum(n * n for n in lens)
    encoder = 6 * L * layer_params(cfg) * tokens
    attention = 12 * L * H * squares  # QK^T and AV: 2 * 2 * n^2 * H forward, x3 with backward
    mlm = 6 * (H * H + H * V) * num_predictions  # transform + decoder, masked positions only
    per_sequence = 6 * (H * H + 2 * H) * len(lens)  # pooler + NSP, once per sequence
    return float(encoder + attention + mlm + per_sequence)


def pretraining_flops_per_token(cfg: BertConfig, seq_len: int, max_predictions: int) -> float:
    """Training FLOPs (forward + backward) per token of a (seq_len)-token sequence with
    `max_predictions` MLM positions; ~1.9e9 for bert-large at seq 128 with 20 predictions."""
    return pretraining_flops(cfg, [seq_len], max_predictions) / seq_len
