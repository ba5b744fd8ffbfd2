"""Our models in MLflow without pickle: a pyfunc whose data is a HF folder.

A pretrained or fine-tuned model is logged as an MLflow pyfunc model with
`loader_module="jobs.tracking"` and the HF folder (safetensors, config.json, vocab.txt) as
its data. `mlflow.pyfunc.load_model` calls `_load_pyfunc(data_path)`, which builds a
`BertPyfunc` (texts -> pooled [CLS] vectors) from those files: safetensors and JSON only.
`download_model` fetches such a model (models:/..., runs:/...) as a local HF folder for the
jobs that train or evaluate it. Never pickles or unpickles anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from jobs.train.runtime import MLFLOW_CLIENT_ENV


class BertPyfunc:
    """What `mlflow.pyfunc.load_model` returns for our models: texts -> pooled [CLS] vectors."""

    def __init__(self, path: str):
        import model.hf
        self.path = Path(path)
        self.model = model.hf.load(self.path).eval()
        cfg = json.loads((self.path / "tokenizer_config.json").read_text()) \
            if (self.path / "tokenizer_config.json").is_file() else {}
        from tokenizers import BertWordPieceTokenizer
        self.tokenizer = BertWordPieceTokenizer(str(self.path / "vocab.txt"),
                                                lowercase=cfg.get("do_lower_case", True))
        self.max_len = self.model.config.max_position_embeddings

    def predict(self, data, params=None):
        import numpy as np
        import torch
        texts = list(data["text"]) if hasattr(data, "columns") else list(data)
        out = []
        with torch.no_grad():
            for text in texts:
                ids = self.tokenizer.encode(str(text)).ids[:self.max_len]
                pooled = self.model.bert(torch.tensor([ids])).pooler_output
                out.append(pooled[0].numpy())
        return np.stack(out) if out else np.zeros((0, self.model.config.hidden_size))


def _load_pyfunc(data_path: str) -> BertPyfunc:
    """MLflow's entry point for `loader_module="jobs.tracking"` models."""
    return BertPyfunc(data_path)


def find_hf_folder(root: Path) -> Path:
    """The folder holding config.json under a downloaded model (pyfunc keeps it in data/)."""
    if (root / "config.json").is_file():
        return root
    found = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"no config.json under {root}")
    return found[0].parent


def download_model(uri: str, dest: str | Path, tracking_uri: str | None = None) -> Path:
    """A models:/ or runs:/ model as a local HF folder under `dest`. With `tracking_uri`,
    MLflow's process-wide tracking and registry URIs are set to it (models:/ resolves
    through the registry URI, not the tracking URI passed to a call)."""
    import mlflow
    for k, v in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(k, v)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest),
                                                tracking_uri=tracking_uri)
    return find_hf_folder(Path(local))
