"""What each fine-tuning task reads, feeds the model, and which head it trains.

`TaskSpec` is the task as a fine-tuned model remembers it (columns, label names, lengths,
SQuAD 2.0 threshold): saved next to the weights as `bertpipe_task.json`, so `bertpipe
evaluate` reads data exactly as training did. `spec_from_config` derives it from the options
and the training rows (label set, regression, SQuAD 2.0); `read_examples` and `featurize`
turn a data file into rows and features; `build_model` puts the task's head on a
pretrained BERT. The heads are `model.tasks`' (transformers' names and losses).
Never starts Ray or MLflow, never trains.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import model.hf
from jobs.config import ConfigError
from jobs.finetune.config import FinetuneConfig
from model import (
    BertConfig,
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from pipeline.errors import InputError
from pipeline.tasks.features import (
    Features,
    encode_choices,
    encode_pairs,
    encode_words,
    is_fractional,
    label_ids,
    label_key,
    label_list,
    task_tokenizer,
)
from pipeline.tasks.readers import read_rows, read_squad, require_columns
from pipeline.tasks.squad import encode_squad
from pipeline.tokenizer import load_vocab

SPEC_FILE = "bertpipe_task.json"
HEADS = {"classification": BertForSequenceClassification,
         "token-classification": BertForTokenClassification,
         "question-answering": BertForQuestionAnswering,
         "multiple-choice": BertForMultipleChoice}
# columns the model's forward() takes, per task (the rest are decoding aids)
TARGETS = {"question-answering": ("start_positions", "end_positions")}
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class TaskSpec:
    task: str
    """One of finetune_config.TASKS"""
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    choice_columns: list[str] | None = None
    labels: list[str] | None = None
    """Output index -> label name (classification, token-classification)"""
    regression: bool = False
    max_seq_length: int = 128
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    version_2_with_negative: bool = False
    null_threshold: float = 0.0
    """SQuAD 2.0: predict no answer when null score - best span score exceeds this"""
    metric: str = "accuracy"
    """The dev metric that picked this model"""

    def target_names(self) -> tuple[str, ...]:
        return TARGETS.get(self.task, ("labels",))

    def save(self, folder: str | Path) -> None:
        (Path(folder) / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> TaskSpec | None:
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def default_columns(task: str) -> tuple[str | None, str | None, str | None]:
    """(text, text pair, label) column names a task reads when none are given."""
    return {"classification": ("text", None, "label"),
            "token-classification": ("tokens", None, "tags"),
            "question-answering": (None, None, None),
            "multiple-choice": ("sent1", None, "label")}[task]


def read_examples(spec: TaskSpec, path: str, fmt: str = "auto",
                  limit: int | None = None) -> list[dict]:
    rows = read_squad(path, fmt) if spec.task == "question-answering" else read_rows(path, fmt)
    rows = rows[:limit] if limit else rows
    needed = [c for c in (spec.text_column, spec.text_pair_column) if c]
    if spec.task != "question-answering":
        needed.append(spec.label_column)
    if spec.task == "multiple-choice" and spec.choice_columns:
        needed += spec.choice_columns
    require_columns(rows, needed, path)
    return rows


def _endings_columns(row: dict) -> list[str]:
    found = sorted((int(m.group(1)), k) for k in row if (m := re.fullmatch(r"ending(\d+)", k)))
    return [k for _, k in found]


def spec_from_config(cfg: FinetuneConfig) -> TaskSpec:
    """The task's spec before looking at data (columns and lengths from the options)."""
    text, pair, label = default_columns(cfg.task)
    return TaskSpec(task=cfg.task, text_column=cfg.text_column or text,
                    text_pair_column=cfg.text_pair_column or pair,
                    label_column=cfg.label_column or label,
                    choice_columns=cfg.choice_columns, labels=cfg.labels,
                    regression=bool(cfg.regression), max_seq_length=cfg.max_seq_length,
                    doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length,
                    max_answer_length=cfg.max_answer_length,
                    version_2_with_negative=bool(cfg.version_2_with_negative))


def fit_to_training_rows(spec: TaskSpec, cfg: FinetuneConfig, rows: list[dict],
                         where: str = "training data") -> TaskSpec:
    """Fill in what the training data (file `where`) decides: label names, regression,
    SQuAD 2.0, multiple-choice ending columns."""
    spec = dataclasses.replace(spec)
    if spec.task == "classification":
        values = [r[spec.label_column] for r in rows]
        spec.regression = cfg.regression if cfg.regression is not None else is_fractional(values)
        if not spec.regression and not spec.labels:
            spec.labels = label_list(values)
            if len(spec.labels) < 2:
                raise InputError(f"{where}: the label column '{spec.label_column}' holds one "
                                 f"value ({spec.labels[0]!r}); classification needs two or more")
    elif spec.task == "token-classification" and not spec.labels:
        tags = [t for r in rows for t in r[spec.label_column]]
        if tags and all(isinstance(t, int) for t in tags):
            raise ConfigError("token-classification data with integer tags: pass --labels with "
                              "the tag names in id order (e.g. O B-PER I-PER)")
        spec.labels = label_list(tags)
    elif spec.task == "question-answering" and cfg.version_2_with_negative is None:
        spec.version_2_with_negative = any(r["is_impossible"] for r in rows)
    elif spec.task == "multiple-choice" and not spec.choice_columns:
        # endings: columns ending0, ending1, ... (SWAG) or else one list column "endings"
        spec.choice_columns = _endings_columns(rows[0]) or None
        if spec.choice_columns is None and not isinstance(rows[0].get("endings"), list):
            raise InputError(f"{where}: no endings found (columns ending0, ending1, ... or a "
                             "list column 'endings'); name them with --choice-columns")
    spec.metric = cfg.default_metric(spec.regression)
    return spec


def tokenizer_for(hf_dir: str | Path):
    """The model's own WordPiece (vocab.txt and casing from its folder)."""
    hf_dir = Path(hf_dir)
    vocab = load_vocab(str(hf_dir / "vocab.txt"))
    lower = True
    if (hf_dir / "tokenizer_config.json").is_file():
        lower = bool(json.loads((hf_dir / "tokenizer_config.json").read_text())
                     .get("do_lower_case", True))
    return task_tokenizer(vocab, lower), vocab, lower


def word_tags(spec: TaskSpec, rows: list[dict], where: str) -> list[list[str]]:
    """Each sentence's tags as names (integer tags index spec.labels)."""
    out = []
    for i, r in enumerate(rows):
        tags, words = r[spec.label_column], r[spec.text_column]
        if len(tags) != len(words):
            raise InputError(f"{where}: record {i + 1} has {len(words)} tokens but "
                             f"{len(tags)} tags")
        out.append([spec.labels[t] if isinstance(t, int) and not isinstance(t, bool)
                    and 0 <= t < len(spec.labels) else label_key(t) for t in tags])
    return out


def featurize(spec: TaskSpec, tok, vocab: list[str], rows: list[dict], where: str,
              training: bool) -> Features:
    """Rows -> features; labels the model does not know are one error naming them."""
    n = len(rows)
    index = list(range(n))
    if spec.task == "classification":
        cols = encode_pairs(tok, [str(r[spec.text_column]) for r in rows],
                            [str(r[spec.text_pair_column]) for r in rows]
                            if spec.text_pair_column else None, spec.max_seq_length)
        values = [r[spec.label_column] for r in rows]
        if spec.regression:
            try:
                cols["labels"] = list(np.asarray(values, dtype=np.float32))
            except ValueError:
                raise InputError(f"{where}: label column '{spec.label_column}' is not numeric "
                                 "(regression)") from None
        else:
            cols["labels"] = list(label_ids(values, spec.labels, where))
        return Features(cols, np.asarray(index), n)
    if spec.task == "token-classification":
        tags = word_tags(spec, rows, where)
        ids = [list(label_ids(t, spec.labels, where)) for t in tags]
        cols, starts = encode_words(tok, [r[spec.text_column] for r in rows], ids,
                                    spec.max_seq_length)
        return Features(cols, np.asarray(index), n, {"word_starts": starts})
    if spec.task == "multiple-choice":
        if not spec.choice_columns:
            require_columns(rows, ["endings"], where)
        endings = []
        for r in rows:
            ends = list(r["endings"]) if not spec.choice_columns else \
                [r[c] for c in spec.choice_columns]
            prefix = str(r[spec.text_pair_column]).strip() + " " if spec.text_pair_column else ""
            endings.append([(prefix + str(e)).strip() for e in ends])
        if len({len(e) for e in endings}) != 1:
            raise InputError(f"{where}: records have different numbers of endings")
        cols = encode_choices(tok, [str(r[spec.text_column]) for r in rows], endings,
                              spec.max_seq_length)
        labels = [int(label_key(r[spec.label_column])) if label_key(r[spec.label_column])
                  .lstrip("-").isdigit() else -1 for r in rows]
        bad = next((i for i, v in enumerate(labels) if not 0 <= v < len(endings[0])), None)
        if bad is not None:
            raise InputError(f"{where}: record {bad + 1} has label "
                             f"{rows[bad][spec.label_column]!r}; expected the index of the right "
                             f"ending (0..{len(endings[0]) - 1})")
        cols["labels"] = labels
        return Features(cols, np.asarray(index), n)
    index_of = {t: i for i, t in enumerate(vocab)}
    return encode_squad(tok, rows, spec.max_seq_length, spec.doc_stride, spec.max_query_length,
                        training, index_of["[CLS]"], index_of["[SEP]"])


def reinit_top(net: torch.nn.Module, layers: int) -> torch.nn.Module:
    """Draw the pooler and the top `layers` encoder layers again from BERT's initialization
    (torch's current seed); the embeddings, lower layers and the task head are kept."""
    encoder = net.bert.encoder.layer
    if not 0 <= layers <= len(encoder):
        raise ValueError(f"cannot re-initialize {layers} of {len(encoder)} layers")
    for module in [*encoder[len(encoder) - layers:], net.bert.pooler]:
        if module is not None:
            net.init_weights(module)
    return net


def build_model(spec: TaskSpec, hf_dir: str | Path, pretrained: bool = True) -> torch.nn.Module:
    """The task's head on the pretrained encoder in `hf_dir` (a new head if it has none).

    pretrained=False: the same architecture (`hf_dir`'s config.json) with every weight from
    BERT's initialization, drawn from torch's current seed exactly as the pretrained model's
    head is (the from-scratch baseline)."""
    cls = HEADS[spec.task]
    overrides = {}
    if spec.task in ("classification", "token-classification"):
        n = 1 if spec.regression else len(spec.labels)
        overrides = {"num_labels": n,
                     "id2label": None if spec.regression else dict(enumerate(spec.labels))}
    if pretrained:
        return model.hf.load(hf_dir, cls=cls, **overrides)
    config = BertConfig.from_json(Path(hf_dir) / "config.json")
    return cls(BertConfig(**{**config.to_dict(), **overrides}))
