"""The DeepSpeed JSON presets are ZeRO configs the pretrain job accepts."""
from __future__ import annotations

import pytest

from tests.unit.infra.scan import BUCKET, INFRA, README, load, rel

DEEPSPEED_FILES = sorted((INFRA / "deepspeed").glob("*.json"))


@pytest.mark.parametrize("path", DEEPSPEED_FILES, ids=rel)
def test_deepspeed_presets_are_zero_configs_the_pretrain_job_accepts(path):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from jobs.train.deepspeed import OWNED_KEYS, merge_user_config
    config = load(path)[0]
    assert not set(config) & set(OWNED_KEYS)
    zero = config.get("zero_optimization", {})
    assert not {"stage", "offload_optimizer", "offload_param"} & set(zero), (
        "--zero-stage and --offload-* own these; a file setting them would contradict the flags")
    for stage in (1, 2, 3):
        DeepSpeedZeroConfig(**zero, stage=stage)  # unknown or misspelled keys are refused
    merged = merge_user_config({"zero_optimization": {"stage": 2}}, rel(path))
    assert merged["zero_optimization"]["stage"] == 2
    assert path.name in README.read_text(), "infra/README.md's table must list every preset"


def test_pretrain_presets_that_name_a_deepspeed_file_build_a_deepspeed_config():
    from jobs.config import load_preset, presets
    from jobs.pretrain.config import PretrainConfig
    named = 0
    for name in presets("pretrain"):
        cfg = load_preset(PretrainConfig, "pretrain", name)
        if cfg.deepspeed_config:
            named += 1
            cfg.data = f"{BUCKET}/data"
            assert cfg.deepspeed_json(gpu=True)["zero_optimization"]["stage"] == cfg.zero_stage
    assert named
