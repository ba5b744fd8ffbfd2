"""`BertConfig`: the shape of a BERT model, with Hugging Face's field names and presets.

It reads and writes Hugging Face `config.json` files, so a folder saved here loads in
`transformers` and any HF BERT folder loads here. It describes a model and nothing else:
never training options, data paths or tokenizer settings.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


class ModelError(ValueError):
    """A model that cannot be built or loaded as asked (bad config, missing or misfit
    weights); the message is one line that names the file or field."""


# Google's BERT sizes (L layers, H hidden, A heads); the FFN is always 4H wide.
PRESETS: dict[str, tuple[int, int, int]] = {
    "bert-tiny": (2, 128, 2),
    "bert-mini": (4, 256, 4),
    "bert-small": (4, 512, 8),
    "bert-medium": (8, 512, 8),
    "bert-base": (12, 768, 12),
    "bert-large": (24, 1024, 16),
}

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


@dataclass
class BertConfig:
    vocab_size: int = 30522
    """Rows of the word embedding (may exceed vocab.txt, e.g. padded to a multiple of 8)"""
    hidden_size: int = 768
    """Width H of every token vector"""
    num_hidden_layers: int = 12
    """Encoder layers L"""
    num_attention_heads: int = 12
    """Attention heads A per layer; H must be a multiple of A"""
    intermediate_size: int = 3072
    """Width of the feed-forward layer (4H in every BERT preset)"""
    hidden_act: str = "gelu"
    """Feed-forward and MLM-transform activation: gelu (exact, erf), gelu_new (tanh), relu, silu"""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on each sublayer output before the residual add"""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities"""
    max_position_embeddings: int = 512
    """Longest sequence the learned position embedding covers"""
    type_vocab_size: int = 2
    """Segment (token type) ids: 0 for sentence A, 1 for sentence B"""
    initializer_range: float = 0.02
    """Std of the normal initialization of every weight matrix and embedding"""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT's TF value)"""
    pad_token_id: int = 0
    """Id of [PAD]; its word-embedding row starts at zero and gets no gradient (as in HF)"""
    num_labels: int = 2
    """Outputs of a sequence/token classification head (1 = regression)"""
    id2label: dict[int, str] | None = None
    """Optional label names of a classification head, by output index"""
    classifier_dropout: float | None = None
    """Dropout before a classification head (None: hidden_dropout_prob)"""

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ModelError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ModelError(f"hidden_act {self.hidden_act!r} is not supported "
                             f"(one of: {', '.join(ACTIVATIONS)})")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if len(self.id2label) != self.num_labels:
                raise ModelError(f"id2label names {len(self.id2label)} labels but num_labels "
                                 f"is {self.num_labels}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> BertConfig:
        """One of `PRESETS` (bert-tiny ... bert-large); keyword arguments override fields."""
        if name not in PRESETS:
            raise ModelError(f"unknown BERT preset {name!r} (one of: {', '.join(PRESETS)})")
        layers, hidden, heads = PRESETS[name]
        values = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                      intermediate_size=4 * hidden)
        return cls(**{**values, **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        """From a HF config dict; keys that are not fields (`architectures`, ...) are ignored."""
        if d.get("model_type", "bert") != "bert":
            raise ModelError(f"model_type {d['model_type']!r} is not BERT")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"position_embedding_type {d['position_embedding_type']!r} is not "
                             "supported (only absolute)")
        if d.get("is_decoder") or d.get("tie_word_embeddings") is False:
            raise ModelError("decoder BERT and untied word embeddings are not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names and v is not None}
        if "id2label" in values:  # HF derives num_labels from id2label
            values["num_labels"] = len(values["id2label"])
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path} does not exist (expected a HF BERT config.json)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_hf_dict(self, architectures: list[str] | None = None) -> dict:
        """The `config.json` content transformers expects (model_type, labels, tied embeddings)."""
        d = self.to_dict()
        id2label = d.pop("id2label") or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        d.update(model_type="bert", position_embedding_type="absolute", tie_word_embeddings=True,
                 id2label={str(i): name for i, name in id2label.items()},
                 label2id={name: i for i, name in id2label.items()})
        if architectures:
            d["architectures"] = list(architectures)
        return dict(sorted(d.items()))

    def to_json(self, path: str | Path, architectures: list[str] | None = None) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(architectures), indent=2) + "\n")
