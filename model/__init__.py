"""BERT as a library: config and presets, encoder, pretraining and fine-tuning heads.

Parameter names, forward arguments and output fields are transformers' own, so HF code and
checkpoints work unchanged (`model.hf` reads and writes HF folders). This package never
imports transformers, Ray or MLflow, and never reads training data.
"""
from model.bert import BertModel, BertPreTrainedModel
from model.config import PRESETS, BertConfig, ModelError
from model.outputs import (
                           BaseModelOutput,
                           BertForPreTrainingOutput,
                           ClassifierOutput,
                           QuestionAnsweringModelOutput,
)
from model.pretraining import BertForPreTraining
from model.tasks import (
                           BertForMultipleChoice,
                           BertForQuestionAnswering,
                           BertForSequenceClassification,
                           BertForTokenClassification,
                           best_spans,
)

__all__ = [
    "PRESETS", "BertConfig", "ModelError", "BertPreTrainedModel", "BertModel", "BertForPreTraining",
    "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
    "BertForMultipleChoice", "best_spans", "BaseModelOutput", "BertForPreTrainingOutput",
    "ClassifierOutput", "QuestionAnsweringModelOutput",
]
