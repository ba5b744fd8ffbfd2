"""Every shipped workflow file uses real config keys and its sections validate."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from jobs.config import from_dict, values_for
from jobs.evaluate import EvaluateConfig
from jobs.finetune.config import FinetuneConfig
from jobs.pretrain.config import PretrainConfig
from pipeline.config import PrepareConfig

WORKFLOWS = Path(__file__).resolve().parents[3] / "jobs" / "workflows"


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yaml")), ids=lambda p: p.name)
def test_workflow_files_use_real_config_keys(path):
    wf = yaml.safe_load(path.read_text())
    assert wf["name"] and wf["storage"] and wf["prepare"] and wf["pretrain"]
    assert set(wf["prepare"]) <= field_names(PrepareConfig) - {"output"}
    for key in ("pretrain", "pretrain_phase2"):
        if key not in wf:
            continue
        stage = dict(wf[key])
        assert set(stage.pop("prepare", {})) <= field_names(PrepareConfig) - {"output"}
        values = {**values_for("pretrain", stage), "data": "s3://YOUR-BUCKET/data"}
        from_dict(PretrainConfig, values, origin=f"{path.name} {key}").validate()
    for item in wf.get("finetune", []):
        assert set(item) <= field_names(FinetuneConfig) | {"preset"}
        from_dict(FinetuneConfig, {"model": "models:/m@phase2", **values_for("finetune", item)}
                  ).validate()
    for item in wf.get("evaluate", []):
        from_dict(EvaluateConfig, {"model": "models:/m@best", **item}).validate()
