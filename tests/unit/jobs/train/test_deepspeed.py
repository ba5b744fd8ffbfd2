"""The DeepSpeed config written once for every training job: precision, tuning files."""
from __future__ import annotations

import json

import pytest

from jobs.config import ConfigError
from jobs.pretrain.config import PretrainConfig
from jobs.train.deepspeed import deepspeed_config


def test_fp16_on_cpus_is_refused_and_auto_means_fp32_there():
    assert PretrainConfig(data="d").resolved_precision(gpu=False) == "fp32"
    assert PretrainConfig(data="d").resolved_precision(gpu=True) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs GPUs"):
        PretrainConfig(data="d", precision="fp16").deepspeed_json(gpu=False)


def test_a_deepspeed_file_may_tune_but_not_change_batch_or_precision(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}}))
    out = PretrainConfig(data="d", zero_stage=2, deepspeed_config=str(f)).deepspeed_json(False)
    assert out["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    f.write_text(json.dumps({"train_batch_size": 8}))
    with pytest.raises(ConfigError, match="sets 'train_batch_size'"):
        PretrainConfig(data="d", deepspeed_config=str(f)).deepspeed_json(False)


def test_fine_tuning_and_pretraining_share_one_deepspeed_config():
    pre = PretrainConfig(data="d", batch_size=32, num_workers=2, zero_stage=1).deepspeed_json(False)
    ft = deepspeed_config(batch_size=32, micro_batch=16, accumulation=1, zero_stage=1,
                          precision="fp32", max_grad_norm=1.0, gpu=False)
    assert pre == ft
