"""Which model a pretraining run trains: its architecture and where its first weights come from.

- Fresh: `--model PRESET` (or a HF folder's config.json), with the embedding sized to the
  data's vocab (rounded up to `vocab_multiple`) and `max_position_embeddings` positions.
- `--init-from`: a checkpoint of this job (its `hf/` folder), a HF folder, or an MLflow model
  URI (downloaded). The architecture is then the source's, and its vocab.txt must be the
  data's (same sha256): a model is only ever trained on the vocab it was built for.
Both the driver (to refuse a misfit before workers start) and each worker (to build the
model) call this. Never builds an optimizer or touches DeepSpeed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from jobs.configargs import ConfigError
from jobs.pretrain_config import PretrainConfig
from model import BertConfig, BertForPreTraining
from model.config import PRESETS
from pipeline.errors import InputError
from pipeline.loader import Dataset, check_fits
from pipeline.storage import filesystem, is_remote

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def resolve_init(init_from: str, dest: Path, tracking_uri: str | None = None) -> Path:
    """A local HF folder for --init-from (downloading MLflow models and remote checkpoints)."""
    src = str(init_from)
    if src.startswith(MLFLOW_SCHEMES):
        from jobs.tracking import download_model
        try:
            return download_model(src, dest, tracking_uri)
        except Exception as e:
            raise InputError(f"--init-from {src}: cannot download it from MLflow "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if is_remote(src):  # a checkpoint in object storage: fetch only its hf/ folder
        import pyarrow.fs as pafs
        fs, inner = filesystem(src.rstrip("/") + "/hf")
        if fs.get_file_info(inner).type != pafs.FileType.Directory:
            raise InputError(f"--init-from {src}: no hf/ folder there (not a checkpoint of "
                             "this job)")
        dest.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(inner, str(dest / "hf"), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return dest / "hf"
    path = Path(src)
    if (path / "config.json").is_file():
        return path
    if (path / "hf" / "config.json").is_file():
        return path / "hf"
    raise InputError(f"--init-from {src}: expected a HF BERT folder (config.json + weights), a "
                     "checkpoint of this job (with hf/) or an MLflow model URI")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_config(cfg: PretrainConfig, ds: Dataset, init_dir: Path | None) -> BertConfig:
    """The architecture, checked against the data (vocab size and sequence length)."""
    if init_dir is not None:
        model_cfg = BertConfig.from_json(init_dir / "config.json")
        vocab = init_dir / "vocab.txt"
        want = ds.manifest["vocab"].get("sha256")
        if vocab.is_file() and want and _sha256(vocab) != want:
            raise InputError(f"--init-from {cfg.init_from}: its vocab.txt differs from the data's "
                             f"({ds.vocab_file}); prepare the data with --vocab {vocab}")
    else:
        size = -(-ds.vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
        if cfg.model in PRESETS:
            model_cfg = BertConfig.from_preset(
                cfg.model, vocab_size=size, max_position_embeddings=cfg.max_position_embeddings)
        elif (Path(cfg.model) / "config.json").is_file():
            model_cfg = BertConfig.from_json(Path(cfg.model) / "config.json")
            model_cfg.vocab_size = size
        else:
            raise ConfigError(f"--model {cfg.model}: not a preset ({', '.join(PRESETS)}) nor a "
                              "folder with a config.json")
    check_fits(ds, model_cfg.vocab_size, model_cfg.max_position_embeddings, cfg.max_seq_length)
    return model_cfg


def build_model(model_cfg: BertConfig, init_dir: Path | None, seed: int) -> BertForPreTraining:
    """The same initial weights on every rank: seeded init, then the source's weights."""
    import torch

    import model.hf
    torch.manual_seed(seed)
    m = BertForPreTraining(model_cfg)
    if init_dir is not None:
        model.hf.copy_state(m, model.hf.read_weights(init_dir), origin=str(init_dir))
    return m
