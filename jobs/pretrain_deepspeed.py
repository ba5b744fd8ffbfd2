"""Everything `deepspeed.initialize` gets from our config: optimizer, schedule, JSON config,
and checkpoint loading without unpickling code.

- Parameter groups as in BERT: weight decay on weight matrices and embeddings, never on
  biases or LayerNorm parameters.
- AdamW (torch; DeepSpeed's CPU Adam when optimizer states are offloaded) or LAMB (below:
  Adam's update scaled per tensor by ||w|| / ||update||, You et al. 2019), for large batches.
- Schedule: linear warmup to the peak, then linear decay to zero at max_steps. Step s (0-based)
  trains with lr * min((s+1)/warmup, (max_steps-s)/(max_steps-warmup)), so no step runs at 0.
- `SafeCheckpointEngine` reads DeepSpeed's own checkpoint files with
  `torch.load(weights_only=True)`, allowing only the few DeepSpeed value classes they hold.
Never touches Ray, MLflow or the data.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from jobs.configargs import ConfigError
from jobs.pretrain_config import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
# keys of the generated DeepSpeed config a --deepspeed-config file may not change
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "optimizer", "scheduler", "bf16", "fp16", "gradient_clipping")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (matrices, embeddings) and not (biases, LayerNorm)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied weights appear once
        if not p.requires_grad:
            continue
        if name.endswith("bias") or "LayerNorm" in name or p.ndim == 1:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class Lamb(torch.optim.Optimizer):
    """LAMB: the Adam(W) direction, scaled per tensor by the trust ratio ||w|| / ||update||."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** step)
                v_hat = v / (1 - beta2 ** step)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm,
                                    torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig, gpu: bool) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "lamb":
        if cfg.offload_optimizer:
            raise ConfigError("optimizer lamb cannot be offloaded; use adamw with offload_optimizer")
        return Lamb(groups, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon)
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # compiled on first use, then cached
        return DeepSpeedCPUAdam(groups, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon,
                                adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon,
                             fused=gpu or None)


def lr_multiplier(step: int, warmup: int, max_steps: int) -> float:
    """Factor of the peak lr for 0-based optimizer step `step`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def build_schedule(optimizer: torch.optim.Optimizer, cfg: PretrainConfig):
    warmup, total = min(cfg.warmup_steps, cfg.max_steps), cfg.max_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, warmup, total))


def deepspeed_config(cfg: PretrainConfig, gpu: bool) -> dict:
    """The DeepSpeed JSON config: batch arithmetic, ZeRO, precision, clipping (+ --deepspeed-config)."""
    precision = cfg.resolved_precision(gpu)
    if precision == "fp16" and not gpu:
        raise ConfigError("precision fp16 needs GPUs; use fp32 (or bf16) on CPUs")
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    out = {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch(),
        "gradient_accumulation_steps": cfg.accumulation(),
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # our own torch optimizers (AdamW, LAMB) are fine under ZeRO
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,  # rank 0 logs progress itself
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed_config:
        out = merge_user_config(out, cfg.deepspeed_config)
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
        raise ConfigError(f"deepspeed_config {path} is not valid JSON ({e})")
    owned = sorted(set(user) & set(OWNED_KEYS))
    if owned:
        raise ConfigError(f"deepspeed_config {path} sets '{owned[0]}', which comes from the job's "
                          "own options (batch_size, micro_batch_size, optimizer, precision, "
                          "grad_clip); remove it from the file")
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
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeCheckpointEngine(config_params)
