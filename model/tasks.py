"""Fine-tuning heads on the BERT encoder, with transformers' names, inputs and losses.

Sequence classification (single sentence or pair; regression when num_labels == 1),
token classification, extractive question answering (start/end logits; SQuAD 2.0's
"no answer" is the span at [CLS]) and multiple choice. `best_spans` turns QA logits into
answers. Never reads task files or tokenizes: the fine-tune job does that.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.bert import BertModel, BertPreTrainedModel
from model.config import BertConfig
from model.outputs import ClassifierOutput, QuestionAnsweringModelOutput


def _classifier_dropout(cfg: BertConfig) -> nn.Dropout:
    p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
    return nn.Dropout(p)


class _TaskModel(BertPreTrainedModel):
    """Encoder + one head; `num_labels` overrides the config's."""

    add_pooling_layer = True

    def __init__(self, config: BertConfig, num_labels: int | None = None):
        if num_labels is not None and num_labels != config.num_labels:
            config = BertConfig(**{**config.to_dict(), "num_labels": num_labels, "id2label": None})
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=self.add_pooling_layer)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                output_hidden_states):
        return self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, inputs_embeds=inputs_embeds,
                         output_hidden_states=output_hidden_states)


class _LinearHead(_TaskModel):
    """dropout -> linear to num_labels over the encoder's output (HF's `classifier`)."""

    def __init__(self, config: BertConfig, num_labels: int | None = None):
        super().__init__(config, num_labels)
        self.dropout = _classifier_dropout(self.config)
        self.classifier = nn.Linear(self.config.hidden_size, self.num_labels)
        self.init_weights(self.classifier)


class BertForSequenceClassification(_LinearHead):
    """Pooled [CLS] -> dropout -> linear. labels: (B,) class ids -> cross-entropy; (B,) floats
    with num_labels == 1 -> MSE regression; (B, num_labels) floats -> multi-label BCE."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=False, return_dict=True):
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states)
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.view(-1).float())
            elif labels.dtype in (torch.long, torch.int):
                loss = F.cross_entropy(logits.float(), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        result = ClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()


class BertForTokenClassification(_LinearHead):
    """Each token -> dropout -> linear; labels (B, T) with -100 where no label (padding,
    WordPieces after a word's first)."""

    add_pooling_layer = False

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=False, return_dict=True):
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        result = ClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()


class BertForQuestionAnswering(_TaskModel):
    """Each token -> linear -> (start, end) logits. start/end_positions (B,); an unanswerable
    question (SQuAD 2.0) has both at 0, the [CLS] token. Positions beyond the sequence (the
    answer was cut off) are ignored, as in HF."""

    add_pooling_layer = False

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(self.config.hidden_size, 2)
        self.init_weights(self.qa_outputs)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None,
                output_hidden_states=False, return_dict=True):
        out = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                           output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits.unbind(-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start_logits.size(1)  # a clamped position T is "outside": ignored
            start = start_positions.view(-1).clamp(0, T)
            end = end_positions.view(-1).clamp(0, T)
            loss = (F.cross_entropy(start_logits.float(), start, ignore_index=T)
                    + F.cross_entropy(end_logits.float(), end, ignore_index=T)) / 2
        result = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits.contiguous(),
                                              end_logits=end_logits.contiguous(),
                                              hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()


class BertForMultipleChoice(_TaskModel):
    """Inputs (B, C, T), one sequence per choice -> pooled -> linear -> (B, C) logits; labels
    (B,) the right choice."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dropout = _classifier_dropout(self.config)
        self.classifier = nn.Linear(self.config.hidden_size, 1)
        self.init_weights(self.classifier)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=False, return_dict=True):
        C = (input_ids if input_ids is not None else inputs_embeds).size(1)
        flat = [t.flatten(0, 1) if t is not None else None  # (B, C, ...) -> (B*C, ...)
                for t in (input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)]
        out = self._encode(*flat, output_hidden_states)
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, C)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels.view(-1)) if labels is not None else None
        result = ClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()


@torch.no_grad()
def best_spans(start_logits, end_logits, context_mask=None, max_answer_length: int = 30):
    """The best answer span per example, and the SQuAD 2.0 "no answer" score.

    start_logits, end_logits: (B, T); context_mask: (B, T) bool, True where an answer may lie
    (the passage's tokens; default: every token but [CLS]). Returns start (B,), end (B,) with
    start <= end < start + max_answer_length, their score start+end logit (B,), and the null
    score (B,) of the [CLS] span. Predict "no answer" when null - score exceeds a threshold
    tuned on dev (0 by default in BERT's run_squad).
    """
    B, T = start_logits.shape
    if context_mask is None:
        context_mask = torch.ones(B, T, dtype=torch.bool, device=start_logits.device)
        context_mask[:, 0] = False
    scores = start_logits[:, :, None] + end_logits[:, None, :]  # (B, T start, T end)
    i = torch.arange(T, device=scores.device)
    length_ok = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_length)
    ok = length_ok[None] & context_mask[:, :, None] & context_mask[:, None, :]
    flat = scores.masked_fill(~ok, float("-inf")).flatten(1).argmax(-1)  # (B,)
    start, end = flat // T, flat % T
    score = scores.flatten(1).gather(1, flat[:, None]).squeeze(1)
    return start, end, score, start_logits[:, 0] + end_logits[:, 0]
