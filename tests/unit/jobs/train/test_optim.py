"""Optimizer groups, the warmup/decay schedule, LAMB: shared by pretraining and fine-tuning."""
from __future__ import annotations

import pytest
import torch

from jobs.train.optim import Lamb, build_schedule, lr_multiplier, param_groups
from model import BertConfig, BertForPreTraining


def test_no_weight_decay_on_biases_and_layernorm():
    model = BertForPreTraining(BertConfig.from_preset("bert-tiny", vocab_size=100))
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)]
               for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]
               for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_the_schedule_warms_up_linearly_then_decays_to_zero():
    assert [lr_multiplier(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(8, 4, 12) == 0.5
    assert lr_multiplier(11, 4, 12) == pytest.approx(1 / 8)   # the last step still trains
    assert lr_multiplier(12, 4, 12) == 0.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    build_schedule(opt, warmup=4, total=12)
    assert opt.param_groups[0]["lr"] == 0.25                    # step 0 does not run at lr 0


def test_lamb_scales_each_tensors_adam_update_by_its_trust_ratio():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    w0 = w.detach().clone()
    w.grad = torch.randn(4, 3)
    Lamb([w], lr=0.1, weight_decay=0.01, eps=1e-6).step()
    m_hat, v_hat = w.grad, w.grad ** 2                          # step 1: bias-corrected moments
    update = m_hat / (v_hat.sqrt() + 1e-6) + 0.01 * w0
    expected = w0 - 0.1 * (w0.norm() / update.norm()) * update
    torch.testing.assert_close(w.detach(), expected)
