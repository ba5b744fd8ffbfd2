"""Precision and device choice, and the GPU peaks MFU is measured against."""
from __future__ import annotations

import pytest

from jobs.config import ConfigError
from jobs.train.device import peak_flops, resolve_precision


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H200", "bf16", 989.4), ("NVIDIA A100-SXM4-80GB", "fp16", 312.0),
    ("Tesla V100-SXM2-16GB", "fp16", 125.0), ("Tesla V100-SXM2-16GB", "bf16", None),
    ("NVIDIA H100 80GB HBM3", "fp32", None), ("cpu", "fp32", None), ("Some New GPU", "bf16", None)])
def test_gpu_peaks_are_known_only_where_the_data_sheet_gives_them(name, precision, tflops):
    assert peak_flops(name, precision) == (tflops * 1e12 if tflops else None)


def test_auto_precision_is_bf16_on_gpus_fp32_on_cpus_and_fp16_needs_a_gpu():
    assert resolve_precision("auto", gpu=True) == "bf16"
    assert resolve_precision("auto", gpu=False) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs GPUs"):
        resolve_precision("fp16", gpu=False)
