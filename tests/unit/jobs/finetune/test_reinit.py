"""`--reinit-layers N` (Zhang et al. 2021): the pretrained side starts from the pretrained
embeddings and lower layers, with the pooler and the top N layers drawn again from BERT's
initialization; the scratch side is unchanged."""
from __future__ import annotations

import pytest
import torch

from jobs.finetune.config import FinetuneConfig
from jobs.finetune.loop import initial_model
from jobs.finetune.tasks import spec_from_config
from tests.helpers import job


def _arg(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _spec(tiny_task):
    cfg = FinetuneConfig(task="classification", model=_arg(tiny_task, "--model"),
                         label_column="topic", labels=["a", "b", "c"])
    return spec_from_config(cfg)


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_top_layers_and_pooler_are_drawn_again_the_rest_is_pretrained(tiny_task):
    hf, spec = _arg(tiny_task, "--model"), _spec(tiny_task)
    kept = initial_model(spec, hf, {"seed": 1}, 1)
    fresh = initial_model(spec, hf, {"seed": 1}, 1, reinit_layers=1)
    again = initial_model(spec, hf, {"seed": 1}, 1, reinit_layers=1)
    std = kept.config.initializer_range
    for name in ("embeddings", "encoder.layer.0"):
        a, b = _state(kept.bert.get_submodule(name)), _state(fresh.bert.get_submodule(name))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} must stay pretrained"
    for name in ("encoder.layer.1", "pooler"):
        a, b = _state(kept.bert.get_submodule(name)), _state(fresh.bert.get_submodule(name))
        assert not any(torch.equal(a[k], b[k]) for k in a if k.endswith("dense.weight")), name
    layer = fresh.bert.encoder.layer[1]
    weight = layer.intermediate.dense.weight
    assert weight.std().item() == pytest.approx(std, rel=0.05)       # BERT's N(0, 0.02)
    assert torch.count_nonzero(layer.intermediate.dense.bias) == 0
    assert torch.equal(layer.output.LayerNorm.weight, torch.ones_like(layer.output.LayerNorm.weight))
    # the same seed draws the same weights on every rank
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in fresh.state_dict().items())
    # the scratch side is BERT's initialization throughout, with or without the option
    scratch = initial_model(spec, hf, {"seed": 1, "init": "scratch"}, 1)
    scratch_n = initial_model(spec, hf, {"seed": 1, "init": "scratch"}, 1, reinit_layers=1)
    assert all(torch.equal(v, scratch_n.state_dict()[k]) for k, v in scratch.state_dict().items())


def test_more_layers_than_the_model_has_is_one_line(tiny_task, capsys):
    assert job("finetune")([*tiny_task, "--reinit-layers", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bertpipe: error: reinit_layers 3: ") and \
        err[-1].endswith("has only 2 layers"), err[-3:]
    assert job("finetune")([*tiny_task, "--reinit-layers", "-1"]) == 2
    assert "reinit_layers must be 0 or more" in capsys.readouterr().err
