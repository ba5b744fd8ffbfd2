"""Training metrics over a window of micro-batches, summed over ranks, and MFU.

Each rank adds its micro-batches to a `Window`. What needs the model's outputs (losses,
correct predictions) is summed on the device, where the outputs are: no value crosses to
the host per step. Everything countable (predictions, NSP labels, instances, real tokens,
token slots, model FLOPs) comes from the batch as host numbers the loader computed. `reduce`
all-reduces both once per log interval, reads them back (the one sync point) and turns them
into the logged values: loss / mlm_loss / nsp_loss as means over micro-batches, accuracies
as correct / predicted over all ranks, samples/s and tokens/s (real tokens) over the wall
time, the padding fraction of the batches as trained and as they would have been one
instance per row, and MFU = model FLOPs of the real tokens per second over (workers x the
GPU's dense bf16/fp16 peak, `jobs.train.device`) when that peak is known.
Never logs or reads data itself.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist

from model.config import BertConfig
from model.flops import pretraining_flops
from pipeline.batch import Batch

DEVICE_SUMS = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct")
HOST_SUMS = ("micro_batches", "mlm_count", "nsp_count", "samples", "tokens", "slots",
             "unpacked_slots", "flops")


class Window:
    """Sums of one rank's micro-batches since the last `reduce`."""

    def __init__(self, device: torch.device, model_cfg: BertConfig):
        self.device, self.model_cfg = device, model_cfg
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(DEVICE_SUMS), dtype=torch.float64, device=self.device)
        self._zero = torch.zeros((), device=self.device)  # stands in for a missing output
        self.counts = dict.fromkeys(HOST_SUMS, 0)
        self.started = time.perf_counter()

    def add(self, out, batch: Batch) -> None:
        """One micro-batch's model output. No host sync: device values stay on the device,
        counts are the batch's host numbers."""
        mlm_count, nsp_count = batch.num_predictions, batch.num_nsp_labels
        z = self._zero
        parts = [out.loss.detach(),
                 out.mlm_loss.detach() if out.mlm_loss is not None else z,
                 out.nsp_loss.detach() if out.nsp_loss is not None else z,
                 # accuracy x count = correct predictions (a device value times a host int)
                 out.mlm_accuracy.detach() * mlm_count if out.mlm_accuracy is not None else z,
                 out.nsp_accuracy.detach() * nsp_count if out.nsp_accuracy is not None else z]
        self.sums += torch.stack([p.to(torch.float64).reshape(()) for p in parts])
        c = self.counts
        c["micro_batches"] += 1
        c["mlm_count"] += mlm_count
        c["nsp_count"] += nsp_count if out.nsp_accuracy is not None else 0
        c["samples"] += len(batch)
        c["tokens"] += batch.num_tokens
        c["slots"] += batch.input_ids.numel()
        c["unpacked_slots"] += len(batch) * int(np.max(batch.seq_lens))
        c["flops"] += pretraining_flops(self.model_cfg, batch.seq_lens, mlm_count)

    def reduce(self, world_size: int, peak: float | None, prefix: str = "") -> dict:
        """All ranks call this together; returns the window's metrics (same on every rank).
        This is where the device sums are read: once per log interval."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        host = torch.tensor([float(self.counts[k]) for k in HOST_SUMS], dtype=torch.float64)
        vec = torch.cat([self.sums, host.to(self.device)])
        if dist.is_available() and dist.is_initialized() and world_size > 1:
            dist.all_reduce(vec)
        s = dict(zip(DEVICE_SUMS + HOST_SUMS, vec.tolist()))
        n = max(s["micro_batches"], 1.0)
        out = {"loss": s["loss"] / n, "mlm_loss": s["mlm_loss"] / n,
               "mlm_accuracy": s["mlm_correct"] / max(s["mlm_count"], 1.0)}
        if s["nsp_count"]:
            out.update(nsp_loss=s["nsp_loss"] / n, nsp_accuracy=s["nsp_correct"] / s["nsp_count"])
        if s["slots"]:
            out.update(padding_fraction=1 - s["tokens"] / s["slots"],
                       padding_fraction_unpacked=1 - s["tokens"] / s["unpacked_slots"])
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
