"""The DeepSpeed side of training, written once for pretraining and fine-tuning: the JSON
config `deepspeed.initialize` gets, and checkpoint loading without unpickling code.

- `deepspeed_config`: batch arithmetic, ZeRO stage and offload, precision, clipping, plus an
  optional user JSON (`--deepspeed-config`, e.g. `infra/deepspeed/*.json`) for tuning knobs;
  the keys our options own cannot be changed by that file.
- `SafeCheckpointEngine` reads DeepSpeed's own checkpoint files with
  `torch.load(weights_only=True)`, allowing only the few DeepSpeed value classes they hold.
- `init_distributed`: DeepSpeed's process group, without its inference-only CPU op build.
Never touches Ray, MLflow or the data.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from jobs.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
# keys of the generated DeepSpeed config a --deepspeed-config file may not change
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "optimizer", "scheduler", "bf16", "fp16", "gradient_clipping")


def deepspeed_config(*, batch_size: int, micro_batch: int, accumulation: int, zero_stage: int,
                     precision: str, max_grad_norm: float, gpu: bool,
                     offload_optimizer: bool = False, offload_params: bool = False,
                     user_file: str | None = None) -> dict:
    """The DeepSpeed JSON config for one engine per worker (precision already resolved)."""
    zero: dict = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    out = {
        "train_batch_size": batch_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # our own torch optimizers (AdamW, LAMB) are fine under ZeRO
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,  # rank 0 logs progress itself
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronizes the device at every forward and step by
        # default (a host sync per micro-batch on GPUs); we measure throughput ourselves
        "timers": {"throughput": {"enabled": False}},
    }
    if user_file:
        out = merge_user_config(out, user_file)
    return out


def merge_user_config(base: dict, path: str) -> dict:
    p = Path(path)
    if not p.is_file() and not p.is_absolute() and (REPO / p).is_file():
        p = REPO / p  # presets name files relative to the repository
    if not p.is_file():
        raise ConfigError(f"deepspeed_config {path} does not exist")
    try:
        user = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"deepspeed_config {path} is not valid JSON ({e})") from None
    owned = sorted(set(user) & set(OWNED_KEYS))
    if owned:
        raise ConfigError(f"deepspeed_config {path} sets '{owned[0]}', which comes from the job's "
                          "own options (batch_size, micro_batch_size, optimizer, precision, "
                          "max_grad_norm); remove it from the file")
    out = copy.deepcopy(base)
    _deep_update(out, user)
    return out


def _deep_update(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


def _safe_globals() -> list:
    """The non-tensor classes DeepSpeed stores in its checkpoint files (values, no code)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_checkpoint_engine(config_params=None):
    """A TorchCheckpointEngine whose `load` is `torch.load(weights_only=True)`."""
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            import pickle

            from model.config import ModelError
            with torch.serialization.safe_globals(_safe_globals()):
                try:
                    return torch.load(path, map_location=map_location, weights_only=True)
                except pickle.UnpicklingError:  # a global beyond DeepSpeed's values: code
                    raise ModelError(f"checkpoint file {path} holds pickled code, not only "
                                     "tensors; refused, nothing in it was run") from None

    return SafeCheckpointEngine(config_params)


def init_distributed(gpu: bool) -> None:
    """`deepspeed.init_distributed` for training. On CPU, DeepSpeed's torch backend would first
    compile a shared-memory op (a C++ build, about a minute on 2 cores in each new
    environment, after probing the compilers for every op in every worker) that serves only
    DeepSpeed-Inference's all-reduce; training's collectives go through torch.distributed.
    `deepspeed.ops.__compatible_ops__` is the table it checks (DeepSpeed keeps edits to it):
    the op is marked unavailable, so none of that runs."""
    import deepspeed.ops
    if not gpu:
        deepspeed.ops.__compatible_ops__ = {"deepspeed_shm_comm": False}
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
