"""`BertForPreTraining`: the encoder plus BERT's two pretraining heads and their losses.

Masked LM: transform (dense, activation, LayerNorm), then a decoder whose weight is the word
embedding matrix (tied) plus an output bias. Given `masked_lm_positions`, only those positions
go through the head: with 15% of tokens masked that skips ~85% of the (B, T, V) vocabulary
projection, the largest matrix product of the model at small sizes. Next sentence prediction:
a linear layer on the pooled [CLS]. Parameter names are transformers' (`cls.predictions...`,
`cls.seq_relationship`). Never reads data or optimizes: it returns losses, the caller trains.

Packed rows (several sequences per row, see `model.packing`): `masked_lm_positions` index
the row, as always. NSP needs each sequence's [CLS]: `cls_positions` (B, S) gives their
positions in the row and `next_sentence_label` (B, S) their labels, both padded after a
row's last sequence (positions with -1, labels with -100). Both losses are means over the
real targets (MLM positions, sequences), so a packed batch has the loss of the same
sequences unpacked.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.bert import ACT_FN, BertModel, BertPreTrainedModel
from model.config import BertConfig
from model.outputs import BertForPreTrainingOutput

IGNORE = -100  # target id of a position without a prediction (padding), as in HF


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = ACT_FN[cfg.hidden_act]
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        # decoder.weight is tied to the word embeddings by BertForPreTraining, decoder.bias is
        # `bias`; it stays a module (not a bare matmul) so ZeRO-3 gathers its weight when it runs
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.decoder.bias = self.bias

    def forward(self, x):
        return self.decoder(self.transform(x))  # (..., H) -> (..., V)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


def mean_nll(logits, targets):
    """Mean NLL and accuracy over targets != -100; logits (..., V), targets (...).

    sum / count rather than `mean`, so a batch without targets gives 0, not NaN; the loss is
    computed in fp32 whatever the logits' dtype.
    """
    valid = targets != IGNORE
    count = valid.sum().clamp(min=1)
    nll = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(),
                          ignore_index=IGNORE, reduction="sum")
    correct = (logits.detach().argmax(-1) == targets) & valid
    return nll / count, correct.sum() / count


masked_lm_loss = mean_nll  # the MLM loss; packed NSP uses the same mean over real labels


class BertForPreTraining(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.init_weights(self.cls)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tie

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, next_sentence_label=None,
                masked_lm_positions=None, masked_lm_ids=None, output_hidden_states=False,
                return_dict=True, cls_positions=None, cu_seqlens=None, max_seqlen=None):
        """MLM targets either sparse (masked_lm_positions and masked_lm_ids, (B, P), ids -100
        where padded) or HF-style `labels` (B, T) with -100 where nothing is predicted.
        next_sentence_label (B,): 0 = B follows A, 1 = B is random; with packed rows (B, S)
        beside cls_positions (B, S). position_ids, cu_seqlens, max_seqlen: see BertModel."""
        if masked_lm_ids is not None and masked_lm_positions is None:
            raise ValueError("masked_lm_ids needs masked_lm_positions")
        if labels is not None and masked_lm_ids is not None:
            raise ValueError("pass MLM targets as labels or as masked_lm_ids, not both")
        if next_sentence_label is not None and cls_positions is not None \
                and next_sentence_label.shape != cls_positions.shape:
            raise ValueError(f"next_sentence_label {tuple(next_sentence_label.shape)} must have "
                             f"the shape of cls_positions {tuple(cls_positions.shape)}")
        if next_sentence_label is not None and cls_positions is None \
                and next_sentence_label.dim() > 1 and next_sentence_label.size(-1) > 1:
            raise ValueError("a (B, S) next_sentence_label (packed rows) needs cls_positions")
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        output_hidden_states=output_hidden_states, cu_seqlens=cu_seqlens,
                        max_seqlen=max_seqlen, cls_positions=cls_positions)
        x, targets = out.last_hidden_state, labels  # (B, T, H), (B, T)
        if masked_lm_positions is not None:
            # keep only the masked positions: (B, P, H); padded entries point at [CLS]
            index = masked_lm_positions.long().unsqueeze(-1).expand(-1, -1, x.size(-1))
            x, targets = x.gather(1, index), masked_lm_ids
        # (B, P|T, V), (B, 2) or (B, S, 2) with cls_positions
        prediction_logits, nsp_logits = self.cls(x, out.pooler_output)

        mlm_loss = nsp_loss = mlm_acc = nsp_acc = None
        if targets is not None:
            mlm_loss, mlm_acc = mean_nll(prediction_logits, targets)
        if next_sentence_label is not None and cls_positions is not None:
            nsp_loss, nsp_acc = mean_nll(nsp_logits, next_sentence_label.long())
        elif next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label.view(-1).long())
            nsp_right = nsp_logits.detach().argmax(-1) == next_sentence_label.view(-1)
            nsp_acc = nsp_right.float().mean()
        losses = [t for t in (mlm_loss, nsp_loss) if t is not None]
        result = BertForPreTrainingOutput(
            loss=sum(losses) if losses else None, prediction_logits=prediction_logits,
            seq_relationship_logits=nsp_logits, hidden_states=out.hidden_states,
            mlm_loss=mlm_loss, nsp_loss=nsp_loss, mlm_accuracy=mlm_acc, nsp_accuracy=nsp_acc)
        return result if return_dict else result.to_tuple()
