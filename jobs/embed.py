"""`bertpipe embed` / `python -m jobs.embed`: one vector per text, BERT's feature-based use.

Ray Data batch inference (paper §5.3: features from the pretrained network, no fine-tuning):
read JSONL or Parquet (local or s3://), run the encoder in a pool of actors
(`map_batches(Embedder, compute=ActorPoolStrategy(size=n))`, each actor loads the model
once), and write Parquet whose schema is explicit: the kept input columns plus
`vector: list<float32>`. Modes:
- `cls`: the last layer's [CLS] vector (H);
- `mean`: the mean of the last layer over the sequence's tokens, [CLS] and [SEP] included,
  padding not (how sentence-transformers pools; H);
- `last4`: the [CLS] vectors of the last four layers, concatenated (4H; the paper's best
  feature-based choice, "concat last four hidden").
Input order is kept. The actors never take every CPU: Ray Data's read tasks need one, or
the job hangs (the driver refuses such a setting). The last line of stdout is one JSON object.

Example: bertpipe embed --model models:/bert-wiki@latest --input docs.jsonl --output vecs/
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np

from jobs.config import ConfigError
from pipeline.errors import InputError
from pipeline.storage import expand_inputs, filesystem, is_remote

MODES = ("cls", "mean", "last4")


@dataclass
class EmbedConfig:
    PATHS = ("model", "input", "output")  # jobs.train.paths
    model: str = ""
    """The model: an MLflow URI (models:/..., runs:/...) or a HF BERT folder"""
    input: list[str] | None = None
    """Input files, folders or globs (local or s3://): JSONL or Parquet"""
    output: str = ""
    """Output folder of Parquet files (local or s3://)"""
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    """Input format (auto: from the first file's name)"""
    text_column: str = "text"
    """Column holding the text"""
    keep_columns: list[str] | None = None
    """Input columns copied next to the vector (default: all but the text column)"""
    mode: Literal["cls", "mean", "last4"] = "cls"
    """cls (last layer [CLS]), mean (last layer, mean over tokens), last4 ([CLS] of the last
    four layers, concatenated)"""
    max_seq_length: int = 128
    """Tokens per text, [CLS] and [SEP] included (longer texts are cut)"""
    batch_size: int = 64
    """Texts per forward pass"""
    num_actors: int = 1
    """Model replicas (Ray actors) computing in parallel"""
    cpus_per_actor: float = 1.0
    """Ray CPUs per actor (fractions allowed); torch uses this many threads (at least 1)"""
    use_gpu: bool | None = None
    """One GPU per actor (None: when the cluster has any)"""
    tracking_uri: str | None = None
    """MLflow tracking URI, for models:/ and runs:/ models"""
    address: str | None = None
    """Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)"""

    def validate(self) -> EmbedConfig:
        if not self.model:
            raise ConfigError("no model given: pass --model URI_OR_DIR")
        if not self.input:
            raise ConfigError("no input given: pass --input FILE_OR_DIR")
        if not self.output:
            raise ConfigError("no output given: pass --output DIR")
        for name in ("max_seq_length", "batch_size", "num_actors"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.cpus_per_actor <= 0:
            raise ConfigError("cpus_per_actor must be positive")
        return self


class Embedder:
    """A Ray Data actor: loads the encoder once, then pyarrow batches -> vectors."""

    def __init__(self, model_dir: str, model_uri: str, tracking_uri: str | None, mode: str,
                 max_seq_length: int, text_column: str, keep: list[str], threads: int,
                 use_gpu: bool):
        import torch

        import model.hf
        from jobs.finetune.tasks import tokenizer_for
        from jobs.train.sources import local_model_dir
        from model import BertModel
        torch.set_num_threads(max(1, threads))
        hf_dir = local_model_dir(model_dir, model_uri, tracking_uri)
        self.tok, _, _ = tokenizer_for(hf_dir)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.net = model.hf.load(hf_dir, cls=BertModel).to(self.device).eval()
        self.mode, self.max_len, self.text_column, self.keep = mode, max_seq_length, \
            text_column, keep

    def __call__(self, batch):
        import pyarrow as pa
        import torch

        from jobs.finetune.predict import to_tensors
        from pipeline.tasks.features import Features, collate, encode_pairs
        texts = ["" if t is None else str(t) for t in batch.column(self.text_column).to_pylist()]
        cols = encode_pairs(self.tok, texts, None, self.max_len)
        feats = Features(cols, np.arange(len(texts)), len(texts))
        inputs = to_tensors(collate(feats, range(len(texts))), self.device)
        with torch.no_grad():
            vectors = pool(self.net(**inputs, output_hidden_states=self.mode == "last4"),
                           inputs["attention_mask"], self.mode).float().cpu().numpy()
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
        columns = {name: batch.column(name) for name in self.keep}
        columns["vector"] = pa.ListArray.from_arrays(offsets, flat)
        return pa.table(columns)


def pool(out, attention_mask, mode: str):
    """(B, H) or (B, 4H) vectors from an encoder output."""
    if mode == "cls":
        return out.last_hidden_state[:, 0]
    if mode == "mean":
        m = attention_mask[..., None].to(out.last_hidden_state.dtype)  # (B, T, 1)
        return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)
    if mode == "last4":
        import torch
        return torch.cat([h[:, 0] for h in out.hidden_states[-4:]], dim=-1)
    raise ValueError(f"mode {mode!r} is not one of {MODES}")


def _read(cfg: EmbedConfig):
    import ray.data
    files = [p for p, _ in expand_inputs(cfg.input)]
    fmt = cfg.format
    if fmt == "auto":
        name = files[0].lower()
        fmt = "parquet" if name.endswith((".parquet", ".pq")) else "jsonl"
    fs, _ = filesystem(files[0])
    paths = [filesystem(f)[1] for f in files] if is_remote(files[0]) else files
    reader = ray.data.read_parquet if fmt == "parquet" else ray.data.read_json
    kwargs = {"filesystem": fs} if is_remote(files[0]) else {}
    return reader(paths, **kwargs), files


def run(cfg: EmbedConfig) -> dict:
    from jobs.tracking import default_tracking_uri
    from jobs.train.runtime import ray_session, worker_env
    from jobs.train.sources import resolve_model
    from model.config import BertConfig
    cfg.validate()
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    source = resolve_model(cfg.model, tracking_uri)
    hidden = BertConfig.from_json(source.hf_dir / "config.json").hidden_size
    dim = hidden * (4 if cfg.mode == "last4" else 1)
    with ray_session(cfg.address, worker_env([cfg.model, *cfg.input, cfg.output],
                                             tracking_uri)):
        return _embed(cfg, source, tracking_uri, dim)


def _embed(cfg: EmbedConfig, source, tracking_uri: str, dim: int) -> dict:
    import ray
    import ray.data

    from jobs.train.device import use_gpu
    context = ray.data.DataContext.get_current()
    preserve = context.execution_options.preserve_order
    try:
        gpu = use_gpu(cfg.use_gpu)
        cpus = ray.cluster_resources().get("CPU", 0)
        if not gpu and cfg.num_actors * cfg.cpus_per_actor > cpus - 1:
            raise ConfigError(f"{cfg.num_actors} actor(s) x {cfg.cpus_per_actor:g} CPU leave "
                              f"none of the cluster's {cpus:g} CPUs for reading (Ray Data would "
                              "hang); lower num_actors or cpus_per_actor")
        context.execution_options.preserve_order = True  # vectors in input order; a Dataset
        ds, files = _read(cfg)                             # keeps the context it was made in
        columns = ds.schema().names
        if cfg.text_column not in columns:
            raise InputError(f"{files[0]}: no column '{cfg.text_column}' (columns: "
                             f"{', '.join(columns)}); pick one with --text-column")
        keep = cfg.keep_columns if cfg.keep_columns is not None else \
            [c for c in columns if c != cfg.text_column]
        missing = [c for c in keep if c not in columns]
        if missing:
            raise InputError(f"{files[0]}: no column '{missing[0]}' to keep (columns: "
                             f"{', '.join(columns)})")
        out = ds.map_batches(
            Embedder, batch_format="pyarrow", batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            num_cpus=cfg.cpus_per_actor, num_gpus=1 if gpu else 0,
            fn_constructor_kwargs=dict(
                model_dir=str(source.hf_dir), model_uri=cfg.model, tracking_uri=tracking_uri,
                mode=cfg.mode, max_seq_length=cfg.max_seq_length, text_column=cfg.text_column,
                keep=keep, threads=round(cfg.cpus_per_actor), use_gpu=gpu))
        fs, inner = filesystem(cfg.output)
        out.write_parquet(inner if is_remote(cfg.output) else cfg.output,
                          **({"filesystem": fs} if is_remote(cfg.output) else {}))
        rows = _count_rows(cfg.output)
        return {"output": cfg.output, "rows": rows, "dim": dim, "mode": cfg.mode,
                "model": source.uri, "inputs": len(files)}
    finally:
        context.execution_options.preserve_order = preserve


def _count_rows(output: str) -> int:
    """Rows written, from the Parquet footers (no data read)."""
    import pyarrow.parquet as pq
    total = 0
    for path, _ in expand_inputs([output]):
        fs, inner = filesystem(path)
        if path.endswith(".parquet"):
            total += pq.ParquetFile(fs.open_input_file(inner)).metadata.num_rows
    return total


if __name__ == "__main__":
    from jobs.cli import main
    sys.exit(main(["embed", *sys.argv[1:]]))
