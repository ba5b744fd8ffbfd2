"""Where and in what precision training runs, and what the hardware can do at best.

- `resolve_precision`: "auto" is bf16 on GPUs and fp32 on CPUs (bf16 is ~10x slower on an
  AVX2 CPU); fp16 needs a GPU.
- `use_gpu`: the explicit setting, else whether the Ray cluster has GPUs (else, outside Ray,
  whether torch sees one).
- `peak_flops`: the dense bf16/fp16 tensor-core peak of a GPU by its torch name, the
  denominator of MFU. Vendor data sheets, dense (not 2:4 sparse) figures.
Imports neither Ray nor torch at module level: the GPU benchmark uses it without Ray.
"""
from __future__ import annotations

from jobs.config import ConfigError

# TFLOP/s by a substring of torch.cuda.get_device_name(); the first match wins, so the more
# specific names come first ("NVIDIA H100 80GB HBM3" is an SXM H100)
PEAK_TFLOPS_16BIT = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4),
    ("H100", 989.4), ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("V100", 125.0), ("T4", 65.0),
)
NO_BF16 = ("V100", "T4")  # tensor cores without bf16


def resolve_precision(precision: str, gpu: bool) -> str:
    if precision == "auto":
        return "bf16" if gpu else "fp32"
    if precision == "fp16" and not gpu:
        raise ConfigError("precision fp16 needs GPUs; use fp32 (or bf16) on CPUs")
    return precision


def use_gpu(setting: bool | None, ray_running: bool = True) -> bool:
    """The explicit setting, else whether GPUs are there (in the Ray cluster when Ray runs)."""
    if setting is not None:
        return setting
    if ray_running:
        import ray
        return ray.cluster_resources().get("GPU", 0) >= 1
    import torch
    return torch.cuda.is_available()


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of one GPU at this precision, or None (CPU, fp32, or an unknown GPU)."""
    if precision not in ("bf16", "fp16"):
        return None
    for key, tflops in PEAK_TFLOPS_16BIT:
        if key in device_name:
            if precision == "bf16" and key in NO_BF16:
                return None
            return tflops * 1e12
    return None
