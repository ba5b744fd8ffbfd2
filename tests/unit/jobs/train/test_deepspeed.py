"""The DeepSpeed side written once for every training job: config, precision, tuning files, and
its process group on CPU without the inference-only op build."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.config import ConfigError
from jobs.pretrain.config import PretrainConfig
from jobs.train.deepspeed import deepspeed_config
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[4]


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


def test_training_on_cpu_builds_no_deepspeed_op(tmp_path):
    """init_distributed on CPU: a process group for training, and DeepSpeed's inference-only
    shared-memory op neither compiled (an empty op cache) nor loaded. In a subprocess:
    DeepSpeed's communication backend is process-global."""
    script = (
        "import torch, torch.distributed as dist, deepspeed.comm.comm as c\n"
        "from jobs.train.deepspeed import init_distributed\n"
        "init_distributed(gpu=False)\n"
        "t = torch.ones(3); dist.all_reduce(t)\n"
        "print(dist.get_backend(), c.cdb.shm_comm_op, t.tolist())\n"
        "dist.destroy_process_group()\n")
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "TORCH_EXTENSIONS_DIR": str(tmp_path / "ops"), "DS_ACCELERATOR": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "gloo None [1.0, 1.0, 1.0]"
    assert "built successfully" not in run.stdout + run.stderr
    assert not (tmp_path / "ops").exists() or not any((tmp_path / "ops").iterdir())
