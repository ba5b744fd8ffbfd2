"""`TorchEngine`: the three calls a training loop makes of a DeepSpeed engine, in plain torch.

`engine(**inputs)` (forward, under bf16 autocast when asked), `engine.backward(loss)`
(scaled by 1/accumulation, as DeepSpeed does) and `engine.step()` (at the accumulation
boundary: gradient clipping, optimizer step, schedule step, gradients to None). Clipping uses
torch's `clip_grad_norm_`, which scales by min(1, max_norm / norm) on the device without
reading the norm on the host; `get_global_grad_norm` returns it as a device tensor, for the
caller to read when it logs. Nothing here reads a device value, so a step through it is free
of host syncs exactly when the model and optimizer are.

For the torch-only GPU benchmark (`bertpipe bench step`, no DeepSpeed there) and for the
tests that run `jobs.pretrain.loop.Worker.step` on a device DeepSpeed cannot drive. The
pretraining job itself uses DeepSpeed. Never imports DeepSpeed, Ray or MLflow.
"""
from __future__ import annotations

import contextlib

import torch


class TorchEngine:
    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 schedule=None, accumulation: int = 1, max_grad_norm: float = 0.0,
                 autocast: torch.dtype | None = None):
        self.module, self.optimizer, self.schedule = module, optimizer, schedule
        self.accumulation, self.max_grad_norm, self.autocast = accumulation, max_grad_norm, autocast
        self.micro_steps = 0
        self._grad_norm = None

    def _autocast(self, device: torch.device):
        if self.autocast is None or device.type not in ("cuda", "cpu"):
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def __call__(self, **inputs):
        device = next(self.module.parameters()).device
        with self._autocast(device):
            return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation if self.accumulation > 1 else loss).backward()

    def step(self) -> None:
        """Count a micro-batch; at the accumulation boundary update the weights."""
        self.micro_steps += 1
        if self.micro_steps % self.accumulation:
            return
        if self.max_grad_norm:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(),
                                                             self.max_grad_norm)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self):
        """The last clipped step's gradient norm (a device tensor), or None."""
        return self._grad_norm

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()
