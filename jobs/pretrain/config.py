"""`PretrainConfig`: every option of `bertpipe pretrain`, and the checks that tie them together.

Composed of the shared training parts (`jobs.train.config`: compute, optimization,
tracking) plus what only pretraining has: data, architecture, batch plan, evaluation,
checkpoints. The driver resolves it (preset < --config < --set < flags), validates it, and
ships it to every worker as a plain dict. Batch arithmetic lives here (global batch =
micro-batch x workers x accumulation), so the driver refuses an impossible combination
before any worker starts. Never starts Ray, DeepSpeed or MLflow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from jobs.config import ConfigError, hidden, to_yaml
from jobs.train.config import ComputeConfig, OptimConfig, TrackingConfig
from jobs.train.deepspeed import deepspeed_config
from jobs.train.device import resolve_precision


@dataclass
class PretrainConfig(ComputeConfig, OptimConfig, TrackingConfig):
    PATHS = ("data", "storage_path", "init_from", "deepspeed_config")  # jobs.train.paths
    data: str = ""
    """Output directory of `bertpipe prepare` (local or s3://): shards, vocab.txt, manifest.json"""
    model: str = "bert-base"
    """Architecture preset: bert-tiny, bert-mini, bert-small, bert-medium, bert-base,
    bert-large (weights come only from --init-from)"""
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
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO 1-3; uses DeepSpeed's CPU Adam)"""
    offload_params: bool = False
    """Keep parameters in CPU memory between uses (ZeRO 3 only)"""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON (e.g. infra/deepspeed/*.json) merged over the generated config for
    tuning knobs (buckets, overlap); batch, optimizer and precision keys stay ours"""

    dropout: float | None = None
    """Dropout on hidden states and attention probabilities while pretraining (None: the
    architecture's, BERT's 0.1; Cramming pretrains with 0.0). The saved model's config keeps
    the architecture's rates, for fine-tuning"""
    seed: int = 42
    """Seed of initialization, data order and dropout"""
    pad_to_multiple_of: int = 1
    """Pad each batch's length up to a multiple of this (8 suits tensor cores)"""
    prefetch: bool = True
    """Read the next shard and build batches ahead in background threads"""
    packing: bool = False
    """Pack several instances into each row up to the data's max_seq_length (batches drawn
    from the whole shard, not one length bin): the same loss per instance, less padding"""
    compile: bool = False
    """torch.compile the encoder (ZeRO 0-2)"""
    system_metrics_every: float = 10.0
    """Seconds between the system metrics rank 0 logs to the MLflow run (CPU, memory; GPU
    utilisation and memory with nvidia-ml-py); 0 = none"""
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
    storage_path: str = "out/pretrain"
    """Where checkpoints go: a shared folder or s3:// (Ray Train storage)"""
    experiment: str = "bertpipe-pretrain"
    """MLflow experiment of the run"""
    verify_data: Literal["full", "size", "off"] = "full"
    """Check --data against manifest.json before training: full (every file's size and
    sha256, streamed in parallel), size (sizes from a listing: for very large data), off"""
    fail_at_step: int | None = hidden()
    """Testing: a worker kills itself after this step, once per run (fault-tolerance tests)"""
    hold_at_step: int | None = hidden()
    """Testing: rank 0 holds after this step's checkpoint until a test releases it (a test
    injects a fault at a known point: a lost node, an MLflow restart)"""
    fail_while_saving: bool = hidden(False)
    """Testing: with fail_at_step, the last rank dies in the middle of uploading that step's
    checkpoint, once rank 0's part is in storage (a torn checkpoint)"""

    # -- derived values ---------------------------------------------------------------
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size // max(1, self.num_workers)

    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch() * self.num_workers)

    def resolved_precision(self, gpu: bool) -> str:
        return resolve_precision(self.precision, gpu)

    def deepspeed_json(self, gpu: bool) -> dict:
        """The DeepSpeed config of every worker's engine."""
        return deepspeed_config(
            batch_size=self.batch_size, micro_batch=self.micro_batch(),
            accumulation=self.accumulation(), zero_stage=self.zero_stage,
            precision=self.resolved_precision(gpu), max_grad_norm=self.max_grad_norm, gpu=gpu,
            offload_optimizer=self.offload_optimizer, offload_params=self.offload_params,
            user_file=self.deepspeed_config)

    def validate(self) -> PretrainConfig:
        if not self.data:
            raise ConfigError("no data given: pass --data DIR (an output of `bertpipe prepare`)")
        self.check_compute()
        self.check_optim()
        self.check_tracking()
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every",
                     "keep_checkpoints", "pad_to_multiple_of", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("eval_every", "eval_shards", "eval_samples", "max_failures",
                     "system_metrics_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative (got {getattr(self, name)})")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("offload_params needs zero_stage 3")
        if self.compile and self.zero_stage == 3:
            raise ConfigError("compile does not work with zero_stage 3 (its parameter gathering "
                              "breaks the compiled graph); use zero_stage 0-2 or drop --compile")
        micro = self.micro_batch()
        if micro < 1 or self.batch_size % (micro * self.num_workers):
            raise ConfigError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {micro} x "
                f"num_workers {self.num_workers}; pick values whose product divides it")
        return self

    def default_run_name(self) -> str:
        """Stable for the same job: rerunning the same command resumes the same run."""
        skip = (*self.TRACKING_KEYS, "fail_at_step", "fail_while_saving", "hold_at_step",
                "log_every", "system_metrics_every", "compile", "verify_data")  # none
        # changes what is trained: a rerun with them resumes
        keys = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
        return f"pretrain-{self.model}-{digest}"

    def to_yaml(self) -> str:
        return to_yaml(self)
