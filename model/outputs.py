"""What the models return: dataclasses with transformers' field names.

Code written for HF's BERT reads these the same way: `out.loss`, `out["loss"]`, `out[0]`
(the first field that is set), `out.to_tuple()`. Containers only: never compute here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

Tensor = torch.Tensor


class ModelOutput:
    """Attribute, key and (like HF) positional access over the fields that are not None."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: Tensor | None = None
    """(B, T, H) output of the last encoder layer"""
    pooler_output: Tensor | None = None
    """(B, H) tanh(dense([CLS])), the input of NSP and sequence heads; (B, S, H) with
    cls_positions (packed rows), one per sequence"""
    hidden_states: tuple[Tensor, ...] | None = None
    """embeddings + each layer's output, each (B, T, H), when output_hidden_states"""


@dataclass
class BertForPreTrainingOutput(ModelOutput):
    loss: Tensor | None = None
    """mlm_loss + nsp_loss (whichever have targets)"""
    prediction_logits: Tensor | None = None
    """(B, P, V) at masked_lm_positions when given, else (B, T, V)"""
    seq_relationship_logits: Tensor | None = None
    """(B, 2): 0 = B follows A, 1 = B is random; (B, S, 2) with cls_positions"""
    hidden_states: tuple[Tensor, ...] | None = None
    mlm_loss: Tensor | None = None
    """mean NLL over the real MLM targets (-100 excluded)"""
    nsp_loss: Tensor | None = None
    """mean NSP NLL over the batch's sequences (padding entries of packed rows excluded)"""
    mlm_accuracy: Tensor | None = None
    """fraction of real MLM targets predicted right (detached)"""
    nsp_accuracy: Tensor | None = None
    """fraction of NSP labels predicted right (detached)"""


@dataclass
class ClassifierOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    """(B, num_labels) sequence, (B, T, num_labels) token, (B, C) multiple-choice logits"""
    hidden_states: tuple[Tensor, ...] | None = None


# transformers' names for the same container
SequenceClassifierOutput = TokenClassifierOutput = MultipleChoiceModelOutput = ClassifierOutput


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Tensor | None = None
    """mean of the start and end cross-entropies"""
    start_logits: Tensor | None = None
    """(B, T) answer-start score per token; [CLS] (position 0) stands for "no answer" """
    end_logits: Tensor | None = None
    """(B, T) answer-end score per token"""
    hidden_states: tuple[Tensor, ...] | None = None
