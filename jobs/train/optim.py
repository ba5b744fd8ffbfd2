"""Optimizers and the learning-rate schedule, the same for pretraining and fine-tuning.

- Parameter groups as in BERT: weight decay on weight matrices and embeddings, never on
  biases or LayerNorm parameters.
- AdamW or LAMB (Adam's update scaled per tensor by ||w|| / ||update||, You et al. 2019,
  for large batches). On GPUs DeepSpeed's fused CUDA kernels (FusedAdam, FusedLamb) when
  they load, else torch's fused AdamW / the multi-tensor LAMB below; on CPUs torch's AdamW
  and that LAMB; DeepSpeed's CPU Adam when optimizer states are offloaded.
- Schedule: linear warmup to the peak, then linear decay to zero at the last step. Step s
  (0-based) trains with lr * min((s+1)/warmup, (total-s)/(total-warmup)), so no step runs
  at 0.
Never touches Ray, MLflow or the data.
"""
from __future__ import annotations

import sys

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
    """LAMB: the Adam(W) direction, scaled per tensor by the trust ratio ||w|| / ||update||.

    All of a group's tensors at once with torch's multi-tensor (`_foreach_*`) kernels: no
    Python loop over parameters, and nothing read back from the device (the trust ratios
    stay tensors; the step count is a host integer per group, stored with the group).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if "step" not in group:  # a checkpoint of the per-tensor LAMB kept its count there
                group["step"] = int(next((self.state[p]["step"] for p in params
                                          if "step" in self.state[p]), 0))
            group["step"] += 1
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_lerp_(m, grads, 1 - beta1)          # m = b1 m + (1 - b1) g
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            # update = m_hat / (sqrt(v_hat) + eps) + wd * w, bias corrections as host floats
            denom = torch._foreach_div(v, 1 - beta2 ** group["step"])
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(m, 1 - beta1 ** group["step"])
            torch._foreach_div_(update, denom)
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(params))     # (N,) on the device
            u_norm = torch.stack(torch._foreach_norm(update))
            trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm,
                                torch.ones_like(w_norm))
            torch._foreach_mul_(update, list(trust.unbind()))
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss


def deepspeed_fused(name: str, groups: list[dict], **kwargs) -> torch.optim.Optimizer | None:
    """DeepSpeed's fused CUDA optimizer (FusedAdam in AdamW mode, or FusedLamb), or None when
    DeepSpeed or its CUDA op cannot be loaded here (the op is built on first use with the
    machine's CUDA compiler and cached in TORCH_EXTENSIONS_DIR)."""
    try:
        if name == "lamb":
            from deepspeed.ops.lamb import FusedLamb
            return FusedLamb(groups, **kwargs)
        from deepspeed.ops.adam import FusedAdam
        return FusedAdam(groups, adam_w_mode=True, **kwargs)
    except Exception as e:  # ImportError, or the op build failing (no nvcc, no CUDA)
        print(f"[optim] DeepSpeed's fused {name} is not available here "
              f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
              "using torch's", file=sys.stderr, flush=True)
        return None


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, gpu: bool,
                    offload: bool = False) -> torch.optim.Optimizer:
    """AdamW or LAMB over BERT's parameter groups. On GPUs DeepSpeed's fused kernels when
    they load (FusedLamb bounds each trust ratio to [0.01, 10], as its CUDA kernel does),
    else torch's fused AdamW or our multi-tensor LAMB; on CPUs torch's AdamW or our LAMB."""
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "lamb":
        if offload:
            raise ConfigError("optimizer lamb cannot be offloaded; use adamw with offload_optimizer")
        fused = deepspeed_fused("lamb", groups, lr=cfg.learning_rate, betas=betas,
                                eps=cfg.adam_epsilon) if gpu else None
        return fused or Lamb(groups, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon)
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # compiled on first use, then cached
        return DeepSpeedCPUAdam(groups, lr=cfg.learning_rate, betas=betas, eps=cfg.adam_epsilon,
                                adamw_mode=True)
    fused = deepspeed_fused("adamw", groups, lr=cfg.learning_rate, betas=betas,
                            eps=cfg.adam_epsilon) if gpu else None
    return fused or torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas,
                                      eps=cfg.adam_epsilon, fused=gpu or None)


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
