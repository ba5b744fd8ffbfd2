"""`PretrainConfig`: every option of `bertpipe pretrain`, and the checks that tie them together.

The driver resolves it from a preset (`jobs/presets/*.yaml`), `--set` and flags, validates
it, and ships it to every worker as a plain dict. Field docstrings are the `--help` text.
Batch arithmetic lives here too (global batch = micro-batch x workers x accumulation), so the
driver refuses an impossible combination before any worker starts. Never starts Ray,
DeepSpeed or MLflow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from jobs.configargs import ConfigError, from_dict

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class PretrainConfig:
    data: str = ""
    """Output directory of `bertpipe prepare` (local or s3://): shards, vocab.txt, manifest.json"""
    model: str = "bert-base"
    """Architecture: a preset (bert-tiny, bert-mini, bert-small, bert-medium, bert-base,
    bert-large) or a HF folder whose config.json gives it; weights come only from --init-from"""
    init_from: str | None = None
    """Start from these weights with a fresh optimizer and schedule (phase 2): a checkpoint
    of this job, a HF BERT folder, or an MLflow model URI (models:/NAME@ALIAS, runs:/...)"""
    max_seq_length: int | None = None
    """Sequence length the data must have been prepared with (None: whatever it has)"""
    max_position_embeddings: int = 512
    """Positions of a freshly built model (512 lets phase 2 reuse phase 1's weights)"""
    vocab_multiple: int = 1
    """Round the embedding rows of a new model up to a multiple of this (8 suits tensor cores)"""

    max_steps: int = 1000
    """Optimizer steps to train for (the schedule's length)"""
    batch_size: int = 256
    """Global batch in sequences per optimizer step (all workers, all accumulation steps)"""
    micro_batch_size: int | None = None
    """Sequences per worker per forward pass (None: batch_size / num_workers, no accumulation)"""
    optimizer: Literal["adamw", "lamb"] = "adamw"
    """adamw (BERT paper) or lamb (large batches, You et al. 2019)"""
    learning_rate: float = 1e-4
    """Peak learning rate, reached after warmup"""
    warmup_steps: int = 10000
    """Linear warmup steps from 0 to the peak; then linear decay to 0 at max_steps"""
    weight_decay: float = 0.01
    """Decoupled weight decay; never applied to biases and LayerNorm weights"""
    adam_beta1: float = 0.9
    """First-moment decay"""
    adam_beta2: float = 0.999
    """Second-moment decay"""
    adam_epsilon: float = 1e-6
    """Denominator epsilon (BERT used 1e-6)"""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)"""

    num_workers: int = 1
    """Ray Train workers (one per GPU when GPUs are used)"""
    use_gpu: bool | None = None
    """Train on GPUs (None: when the Ray cluster has any)"""
    cpus_per_worker: float = 1.0
    """Ray CPUs reserved per worker (fractions allowed; torch uses at least one thread)"""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer states sharded), 2 (+
    gradients), 3 (+ parameters)"""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO 1-3; uses DeepSpeed's CPU Adam)"""
    offload_params: bool = False
    """Keep parameters in CPU memory between uses (ZeRO 3 only)"""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Training precision; auto = bf16 on GPUs, fp32 on CPUs (bf16 is ~10x slower there)"""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON (e.g. infra/deepspeed/*.json) merged over the generated config for
    tuning knobs (buckets, overlap); batch, optimizer and precision keys stay ours"""

    seed: int = 42
    """Seed of initialization, data order and dropout"""
    pad_to_multiple_of: int = 1
    """Pad each batch's length up to a multiple of this (8 suits tensor cores)"""
    prefetch: bool = True
    """Read the next shard in a background thread"""
    log_every: int = 10
    """Steps between progress lines and MLflow metrics"""
    eval_every: int = 500
    """Steps between evaluations on the held-out shards (0 = only at the end)"""
    eval_shards: int = 1
    """Shards of --data held out for evaluation (never trained on; 0 = no evaluation)"""
    eval_samples: int = 2000
    """Held-out instances evaluated each time (a fixed sample)"""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is always saved at the end)"""
    keep_checkpoints: int = 3
    """Checkpoints kept in storage (the newest)"""
    max_failures: int = 3
    """Worker-group failures to recover from (restart from the last checkpoint)"""

    run_name: str | None = None
    """Name of the run in Ray storage and MLflow; rerunning a name resumes it (default: from
    the model, data and a hash of the config)"""
    storage_path: str = "out/pretrain"
    """Where checkpoints go: a shared folder or s3:// (Ray Train storage)"""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: a SQLite file mlflow.db in the current directory)"""
    experiment: str = "bertpipe-pretrain"
    """MLflow experiment of the run"""
    register_as: str | None = None
    """Register the final model in the MLflow registry under this name"""
    model_alias: str = "current"
    """Alias set on the registered version (e.g. current, phase1; MLflow reserves "latest")"""
    parent_run_id: str | None = None
    """MLflow run to nest this run under (`bertpipe workflow` sets it): tag mlflow.parentRunId"""
    address: str | None = None
    """Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)"""
    fail_at_step: int | None = None
    """Testing: a worker kills itself after this step, once per run (fault-tolerance tests)"""

    # -- derived values ---------------------------------------------------------------
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size // max(1, self.num_workers)

    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch() * self.num_workers)

    def resolved_precision(self, gpu: bool) -> str:
        if self.precision == "auto":
            return "bf16" if gpu else "fp32"
        return self.precision

    def validate(self) -> PretrainConfig:
        if not self.data:
            raise ConfigError("no data given: pass --data DIR (an output of `bertpipe prepare`)")
        for name in ("max_steps", "batch_size", "num_workers", "log_every", "checkpoint_every",
                     "keep_checkpoints", "pad_to_multiple_of", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every", "eval_shards", "eval_samples", "max_failures"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative (got {getattr(self, name)})")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0, 1, 2 or 3 (got {self.zero_stage})")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("offload_params needs zero_stage 3")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive (got {self.learning_rate})")
        micro = self.micro_batch()
        if micro < 1 or self.batch_size % (micro * self.num_workers):
            raise ConfigError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {micro} x "
                f"num_workers {self.num_workers}; pick values whose product divides it")
        if self.cpus_per_worker <= 0:
            raise ConfigError("cpus_per_worker must be positive")
        if self.model_alias.lower() == "latest" or not _safe_name(self.model_alias):
            raise ConfigError(f"model_alias {self.model_alias!r}: MLflow reserves 'latest'; use "
                              "letters, digits, '.', '_' or '-' (e.g. current, phase1)")
        if self.run_name is not None and not _safe_name(self.run_name):
            raise ConfigError(f"run_name {self.run_name!r}: use letters, digits, '.', '_' or '-'")
        return self

    def default_run_name(self) -> str:
        """Stable for the same job: rerunning the same command resumes the same run."""
        keys = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("run_name", "address", "fail_at_step", "tracking_uri",
                             "register_as", "model_alias", "log_every", "parent_run_id")}
        digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
        model = Path(self.model).name if os.sep in self.model else self.model
        return f"pretrain-{model}-{digest}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _safe_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "._-" for c in name)


def presets() -> dict[str, Path]:
    """Shipped pretraining presets by name (`--preset NAME` or `--config jobs/presets/NAME.yaml`);
    the folder also holds other jobs' presets."""
    return {p.stem: p for p in sorted(PRESET_DIR.glob("pretrain-*.yaml"))}


def preset_path(name: str) -> Path:
    found = presets()
    if name not in found:
        raise ConfigError(f"unknown preset {name!r} (one of: {', '.join(found)})")
    return found[name]


def load_preset(name: str) -> PretrainConfig:
    """A shipped preset as a config (without --data, so not yet valid to run)."""
    values = yaml.safe_load(preset_path(name).read_text()) or {}
    return from_dict(PretrainConfig, {k.replace("-", "_"): v for k, v in values.items()},
                     origin=f"preset {name}")
