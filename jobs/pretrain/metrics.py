"""Training metrics over a window of micro-batches, summed over ranks, and MFU.

Each rank adds its micro-batches to a `Window` (on-device sums, so logging costs no sync per
step); `reduce` all-reduces the sums once per log interval and turns them into the logged
values: loss / mlm_loss / nsp_loss as means over micro-batches, accuracies as correct /
predicted over all ranks, samples/s and tokens/s over the wall time, and MFU = model FLOPs/s
over (workers x the GPU's dense bf16/fp16 peak, `jobs.train.device`) when that peak is known.
Never logs or reads data itself.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist

from model.config import BertConfig
from model.flops import pretraining_flops_per_token
from pipeline.batch import IGNORE_INDEX, Batch

STATS = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "mlm_count", "nsp_correct",
         "nsp_count", "micro_batches")


class Window:
    """Sums of one rank's micro-batches since the last `reduce`."""

    def __init__(self, device: torch.device, model_cfg: BertConfig):
        self.device, self.model_cfg = device, model_cfg
        self._flops_cache: dict[tuple[int, int], float] = {}
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(STATS), dtype=torch.float64, device=self.device)
        self.samples = self.tokens = 0
        self.flops = 0.0
        self.started = time.perf_counter()

    def _flops_per_token(self, width: int, predictions: int) -> float:
        key = (width, predictions)
        if key not in self._flops_cache:
            self._flops_cache[key] = pretraining_flops_per_token(self.model_cfg, width, predictions)
        return self._flops_cache[key]

    def add(self, out, batch: Batch) -> None:
        """One micro-batch's model output; counts come from the batch (CPU, no sync)."""
        B, width = batch.input_ids.shape
        mlm_count = int((batch.masked_lm_ids != IGNORE_INDEX).sum())
        zero = torch.zeros((), device=self.device)
        parts = [out.loss.detach(),
                 out.mlm_loss.detach() if out.mlm_loss is not None else zero,
                 out.nsp_loss.detach() if out.nsp_loss is not None else zero,
                 out.mlm_accuracy.detach() * mlm_count if out.mlm_accuracy is not None else zero,
                 torch.tensor(float(mlm_count), device=self.device),
                 out.nsp_accuracy.detach() * B if out.nsp_accuracy is not None else zero,
                 torch.tensor(float(B if out.nsp_accuracy is not None else 0), device=self.device),
                 torch.ones((), device=self.device)]
        self.sums += torch.stack([p.to(torch.float64).reshape(()) for p in parts])
        self.samples += B
        self.tokens += batch.num_tokens
        self.flops += batch.num_tokens * self._flops_per_token(width, max(1, round(mlm_count / B)))

    def reduce(self, world_size: int, peak: float | None, prefix: str = "") -> dict:
        """All ranks call this together; returns the window's metrics (same on every rank)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        vec = torch.cat([self.sums, torch.tensor([self.samples, self.tokens, self.flops],
                                                 dtype=torch.float64, device=self.device)])
        if dist.is_available() and dist.is_initialized() and world_size > 1:
            dist.all_reduce(vec)
        s = dict(zip(STATS + ("samples", "tokens", "flops"), vec.tolist()))
        n = max(s["micro_batches"], 1.0)
        out = {"loss": s["loss"] / n, "mlm_loss": s["mlm_loss"] / n,
               "mlm_accuracy": s["mlm_correct"] / max(s["mlm_count"], 1.0)}
        if s["nsp_count"]:
            out.update(nsp_loss=s["nsp_loss"] / n, nsp_accuracy=s["nsp_correct"] / s["nsp_count"])
        if not prefix:
            out.update(samples_per_s=s["samples"] / elapsed, tokens_per_s=s["tokens"] / elapsed)
            if peak:
                out["mfu"] = s["flops"] / elapsed / (peak * world_size)
        self.reset()
        return {prefix + k: v for k, v in out.items()}


def sample_digest(previous: str, sample_ids: np.ndarray) -> str:
    """A running hash of the samples a rank has trained on, in order."""
    import hashlib
    return hashlib.sha256(previous.encode() + np.ascontiguousarray(sample_ids, np.int64).tobytes()
                          ).hexdigest()
