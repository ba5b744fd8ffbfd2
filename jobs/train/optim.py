"""Optimizers and the learning-rate schedule, the same for pretraining and fine-tuning.

- Parameter groups as in BERT: weight decay on weight matrices and embeddings, never on
  biases or LayerNorm parameters.
- AdamW (torch; fused on GPUs; DeepSpeed's CPU Adam when optimizer states are offloaded) or
  LAMB (below: Adam's update scaled per tensor by ||w|| / ||update||, You et al. 2019), for
  large batches.
- Schedule: linear warmup to the peak, then linear decay to zero at the last step. Step s
  (0-based) trains with lr * min((s+1)/warmup, (total-s)/(total-warmup)), so no step runs
  at 0.
Never touches Ray, MLflow or the data.
"""
from __future__ import annotations

import torch

from jobs.config import ConfigError
from jobs.train.config import OptimConfig


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


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, gpu: bool,
                    offload: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "lamb":
        if offload:
            raise ConfigError("optimizer lamb cannot be offloaded; use adamw with offload_optimizer")
        return Lamb(groups, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon)
    if offload:
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


def build_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """Linear warmup over `warmup` steps, then linear decay to 0 at `total` steps."""
    warmup = min(warmup, total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, warmup, total))
