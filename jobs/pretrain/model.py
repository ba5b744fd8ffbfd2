"""Which model a pretraining run trains: its architecture and where its first weights come from.

- Fresh: `--model PRESET`, with the embedding sized to the data's vocab (rounded up to
  `vocab_multiple`) and `max_position_embeddings` positions. `--model` names an
  architecture only: a folder or a URI there is an error that points at `--init-from`.
- `--init-from`: a checkpoint of this job (its `hf/` folder), a HF folder, or an MLflow model
  URI (resolved to a local folder by `jobs.train.sources`). The architecture is then the
  source's, and its vocab.txt must be the data's (same sha256): a model is only ever trained
  on the vocab it was built for.
Both the driver (to refuse a misfit before workers start) and each worker (to build the
model) call this. Never builds an optimizer or touches DeepSpeed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from jobs.config import ConfigError
from jobs.pretrain.config import PretrainConfig
from model import BertConfig, BertForPreTraining
from model.config import PRESETS
from pipeline.dataset import Dataset, check_fits
from pipeline.errors import InputError


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_config(cfg: PretrainConfig, ds: Dataset, init_dir: Path | None) -> BertConfig:
    """The architecture, checked against the data (vocab size and sequence length)."""
    if init_dir is not None:
        model_cfg = BertConfig.from_json(init_dir / "config.json")
        vocab = init_dir / "vocab.txt"
        want = ds.manifest.vocab.sha256
        if vocab.is_file() and want and _sha256(vocab) != want:
            raise InputError(f"--init-from {cfg.init_from}: its vocab.txt differs from the data's "
                             f"({ds.vocab_file}); prepare the data with --vocab {vocab}")
    elif cfg.model in PRESETS:
        size = -(-ds.vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
        model_cfg = BertConfig.from_preset(
            cfg.model, vocab_size=size, max_position_embeddings=cfg.max_position_embeddings)
    else:
        raise ConfigError(f"--model {cfg.model}: not an architecture preset ({', '.join(PRESETS)});"
                          f" to start from a model's weights pass --init-from {cfg.model}")
    check_fits(ds, model_cfg.vocab_size, model_cfg.max_position_embeddings, cfg.max_seq_length)
    return model_cfg


def build_model(model_cfg: BertConfig, init_dir: Path | None, seed: int,
                dropout: float | None = None) -> BertForPreTraining:
    """The same initial weights on every rank: seeded init, then the source's weights.
    `dropout`: the training-time rate (`PretrainConfig.dropout`; None: the config's)."""
    import torch

    import model.hf
    torch.manual_seed(seed)
    m = BertForPreTraining(model_cfg)
    if init_dir is not None:
        model.hf.copy_state(m, model.hf.read_weights(init_dir), origin=str(init_dir))
    if dropout is not None:
        m.set_dropout(dropout)
    return m


def compile_encoder(m: BertForPreTraining) -> None:
    """torch.compile the encoder in place (`nn.Module.compile`: parameter names, state dicts
    and checkpoints stay as they are). Shapes change from batch to batch: after the first
    recompilation torch marks them dynamic."""
    m.bert.encoder.compile()
