"""Config parts every training job shares, one name per concept: compute, optimization,
tracking.

`PretrainConfig` and `FinetuneConfig` are composed of these dataclasses (they inherit the
fields, so YAML keys and flags stay flat: `--learning-rate`, `learning_rate:`), and each job
only redeclares a field whose default differs. The checks of a part live with the part.
Never imports Ray, torch or MLflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from jobs.config import ConfigError


def safe_name(name: str) -> bool:
    """Letters, digits, '.', '_' or '-' only (MLflow run names, aliases, Ray folders)."""
    return bool(name) and all(c.isalnum() or c in "._-" for c in name)


@dataclass
class ComputeConfig:
    num_workers: int = 1
    """Ray Train workers (one per GPU when GPUs are used)"""
    cpus_per_worker: float = 1.0
    """Ray CPUs reserved per worker (fractions allowed; torch uses at least one thread)"""
    use_gpu: bool | None = None
    """Train on GPUs (None: when the Ray cluster has any)"""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Training precision; auto = bf16 on GPUs, fp32 on CPUs (bf16 is ~10x slower there)"""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer states sharded), 2 (+
    gradients), 3 (+ parameters)"""
    address: str | None = None
    """Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)"""

    def check_compute(self, min_workers: int = 1, max_zero: int = 3) -> None:
        if self.num_workers < min_workers:
            raise ConfigError(f"num_workers must be at least {min_workers} "
                              f"(got {self.num_workers})")
        if self.cpus_per_worker <= 0:
            raise ConfigError("cpus_per_worker must be positive")
        if self.zero_stage not in range(max_zero + 1):
            raise ConfigError(f"zero_stage must be one of 0..{max_zero} (got {self.zero_stage})")


@dataclass
class OptimConfig:
    RENAMED: ClassVar[dict[str, str]] = {"grad_clip": "max_grad_norm",
                                         "warmup_ratio": "warmup_steps"}
    optimizer: Literal["adamw", "lamb"] = "adamw"
    """adamw (BERT paper) or lamb (large batches, You et al. 2019)"""
    learning_rate: float = 1e-4
    """Peak learning rate, reached after warmup"""
    warmup_steps: float = 10000
    """Linear warmup from 0 to the peak: optimizer steps (>= 1) or a fraction of all steps
    (< 1, e.g. 0.1); then linear decay to 0 at the last step"""
    weight_decay: float = 0.01
    """Decoupled weight decay; never applied to biases and LayerNorm weights"""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)"""
    adam_beta1: float = 0.9
    """First-moment decay"""
    adam_beta2: float = 0.999
    """Second-moment decay"""
    adam_epsilon: float = 1e-6
    """Denominator epsilon (BERT used 1e-6)"""

    def warmup(self, total_steps: int) -> int:
        """Warmup in optimizer steps for a schedule of `total_steps`."""
        if self.warmup_steps < 1:
            return math.ceil(self.warmup_steps * total_steps)
        return min(int(self.warmup_steps), total_steps)

    def check_optim(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive (got {self.learning_rate})")
        if self.warmup_steps < 0 or (self.warmup_steps >= 1
                                     and not float(self.warmup_steps).is_integer()):
            raise ConfigError(f"warmup_steps must be a whole number of steps or a fraction "
                              f"in [0, 1) (got {self.warmup_steps})")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ConfigError("max_grad_norm and weight_decay must not be negative")


@dataclass
class TrackingConfig:
    run_name: str | None = None
    """Name of the run in Ray storage and MLflow; rerunning a name resumes it (default: from
    the job's settings)"""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite file mlflow.db in the
    current directory)"""
    experiment: str = "bertpipe"
    """MLflow experiment of the run"""
    register_as: str | None = None
    """Register the final model in the MLflow registry under this name"""
    model_alias: str = "current"
    """Alias set on the registered version (e.g. current, phase1; MLflow reserves "latest")"""
    parent_run_id: str | None = None
    """MLflow run to nest this run under (`bertpipe workflow` sets it): tag mlflow.parentRunId"""

    # keys that name where a run is logged, not what it computes (left out of run hashes)
    TRACKING_KEYS: ClassVar[tuple[str, ...]] = (
        "run_name", "tracking_uri", "register_as", "model_alias", "parent_run_id", "address")

    def check_tracking(self) -> None:
        if self.model_alias.lower() == "latest" or not safe_name(self.model_alias):
            raise ConfigError(f"model_alias {self.model_alias!r}: MLflow reserves 'latest'; use "
                              "letters, digits, '.', '_' or '-' (e.g. current, phase1)")
        if self.run_name is not None and not safe_name(self.run_name):
            raise ConfigError(f"run_name {self.run_name!r}: use letters, digits, '.', '_' or '-'")
