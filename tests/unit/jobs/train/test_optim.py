"""Optimizer groups, the warmup/decay schedule, LAMB: shared by pretraining and fine-tuning."""
from __future__ import annotations

import pytest
import torch

from jobs.train.optim import Lamb, build_optimizer, build_schedule, lr_multiplier, param_groups
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


def per_tensor_lamb(params, grads_per_step, lr=0.01, betas=(0.9, 0.999), eps=1e-6, wd=0.01):
    """LAMB written out tensor by tensor (the algorithm as You et al. state it)."""
    w = [p.detach().clone() for p in params]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    for step, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            u = (m[i] / (1 - betas[0] ** step)) / ((v[i] / (1 - betas[1] ** step)).sqrt() + eps)
            u = u + wd * w[i]
            trust = w[i].norm() / u.norm() if w[i].norm() > 0 and u.norm() > 0 else 1.0
            w[i] = w[i] - lr * trust * u
    return w


def test_multi_tensor_lamb_matches_the_per_tensor_algorithm_over_steps():
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(7)),
              torch.nn.Parameter(torch.zeros(3))]  # a zero tensor: trust ratio 1
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    expected = per_tensor_lamb(params, grads)
    opt = Lamb(params, lr=0.01, weight_decay=0.01, eps=1e-6)
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=1e-5)
    assert opt.param_groups[0]["step"] == 4  # kept with the group: resumes with the state


def test_lamb_resumes_from_a_state_dict_where_it_stopped():
    torch.manual_seed(2)
    a = [torch.nn.Parameter(torch.randn(4, 3))]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    grads = [torch.randn(4, 3) for _ in range(3)]
    opt_a = Lamb(a, lr=0.05)
    for g in grads:
        a[0].grad = g.clone()
        opt_a.step()
    opt_b = Lamb(b, lr=0.05)
    b[0].grad = grads[0].clone()
    opt_b.step()
    opt_c = Lamb(b, lr=0.05)
    opt_c.load_state_dict(opt_b.state_dict())  # a checkpoint after step 1
    for g in grads[1:]:
        b[0].grad = g.clone()
        opt_c.step()
    torch.testing.assert_close(b[0].detach(), a[0].detach())


def test_cpu_optimizers_are_torch_adamw_and_the_multi_tensor_lamb():
    from jobs.train.config import OptimConfig
    model = BertForPreTraining(BertConfig.from_preset("bert-tiny", vocab_size=100))
    assert type(build_optimizer(model, OptimConfig(), gpu=False)) is torch.optim.AdamW
    assert type(build_optimizer(model, OptimConfig(optimizer="lamb"), gpu=False)) is Lamb
