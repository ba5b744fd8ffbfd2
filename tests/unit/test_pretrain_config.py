"""PretrainConfig, presets, DeepSpeed config, optimizer groups, schedule, LAMB, model source."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from jobs.configargs import ConfigError
from jobs.pretrain import build_parser, main
from jobs.pretrain_config import PretrainConfig, load_preset, presets
from jobs.pretrain_deepspeed import (Lamb, build_schedule, deepspeed_config, lr_multiplier,
                                     param_groups)
from jobs.pretrain_model import model_config, resolve_init
from model import BertConfig, BertForPreTraining
from pipeline.errors import InputError
from pipeline.loader import open_dataset
from tests.unit.test_loader import write_dataset


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_shipped_preset_parses_and_builds_a_deepspeed_config(name):
    cfg = dataclasses.replace(load_preset(name), data="somewhere").validate()
    ds = deepspeed_config(cfg, gpu=True)
    assert ds["train_batch_size"] == cfg.batch_size == (
        ds["train_micro_batch_size_per_gpu"] * cfg.num_workers * ds["gradient_accumulation_steps"])
    assert ds["zero_optimization"]["stage"] == cfg.zero_stage
    if cfg.deepspeed_config:  # the tuning file is merged in, our keys untouched
        assert "overlap_comm" in ds["zero_optimization"]


def test_the_cli_has_the_flags_the_issue_names():
    flags = {a for action in build_parser()._actions for a in action.option_strings}
    for flag in ("--data", "--model", "--max-steps", "--batch-size", "--learning-rate",
                 "--warmup-steps", "--num-workers", "--zero-stage", "--precision", "--run-name",
                 "--storage-path", "--tracking-uri", "--register-as", "--init-from", "--preset",
                 "--set", "--config"):
        assert flag in flags


def test_a_batch_the_workers_cannot_split_is_a_one_line_error():
    cfg = PretrainConfig(data="d", batch_size=100, micro_batch_size=16, num_workers=2)
    with pytest.raises(ConfigError, match="batch_size 100 is not a multiple"):
        cfg.validate()
    ok = PretrainConfig(data="d", batch_size=128, micro_batch_size=16, num_workers=2).validate()
    assert ok.accumulation() == 4


@pytest.mark.parametrize("values, message", [
    ({"offload_params": True, "zero_stage": 2}, "offload_params needs zero_stage 3"),
    ({"offload_optimizer": True, "zero_stage": 0}, "offload_optimizer needs"),
    ({"zero_stage": 4}, "zero_stage must be 0, 1, 2 or 3"),
    ({"data": ""}, "no data given"),
    ({"run_name": "a b"}, "run_name"),
    ({"model_alias": "Latest"}, "MLflow reserves 'latest'"),
])
def test_inconsistent_options_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig(**{"data": "d", **values}).validate()


def test_fp16_on_cpus_is_refused_and_auto_means_fp32_there():
    assert PretrainConfig(data="d").resolved_precision(gpu=False) == "fp32"
    assert PretrainConfig(data="d").resolved_precision(gpu=True) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs GPUs"):
        deepspeed_config(PretrainConfig(data="d", precision="fp16"), gpu=False)


def test_a_deepspeed_file_may_tune_but_not_change_batch_or_precision(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}}))
    out = deepspeed_config(PretrainConfig(data="d", zero_stage=2, deepspeed_config=str(f)), False)
    assert out["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    f.write_text(json.dumps({"train_batch_size": 8}))
    with pytest.raises(ConfigError, match="sets 'train_batch_size'"):
        deepspeed_config(PretrainConfig(data="d", deepspeed_config=str(f)), False)


def test_the_default_run_name_is_stable_and_follows_the_config():
    a, b = PretrainConfig(data="d", model="bert-tiny"), PretrainConfig(data="d", model="bert-tiny")
    assert a.default_run_name() == b.default_run_name()
    assert a.default_run_name().startswith("pretrain-bert-tiny-")
    assert PretrainConfig(data="d", model="bert-tiny", learning_rate=1.0).default_run_name() \
        != a.default_run_name()


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
    sched = build_schedule(opt, PretrainConfig(data="d", warmup_steps=4, max_steps=12))
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


def test_a_new_model_takes_its_vocab_size_from_the_data(tmp_path):
    ds = open_dataset(str(write_dataset(tmp_path / "d")))      # 1000 tokens, seq 64
    cfg = PretrainConfig(data="d", model="bert-tiny", vocab_multiple=8)
    mc = model_config(cfg, ds, None)
    assert mc.vocab_size == 1000 and mc.num_hidden_layers == 2
    cfg = dataclasses.replace(cfg, vocab_multiple=64)
    assert model_config(cfg, ds, None).vocab_size == 1024
    with pytest.raises(InputError, match="--max-seq-length 128"):
        model_config(dataclasses.replace(cfg, max_seq_length=128), ds, None)


def test_init_from_a_model_with_another_vocab_is_refused(tmp_path, minilm_dir):
    ds = open_dataset(str(write_dataset(tmp_path / "d")))
    init = resolve_init(str(minilm_dir), tmp_path / "init")
    with pytest.raises(InputError, match="vocab.txt differs from the data's"):
        model_config(PretrainConfig(data="d", init_from=str(minilm_dir)), ds, init)


def test_init_from_a_checkpoint_folder_uses_its_hf_export(tmp_path, minilm_dir):
    import shutil
    shutil.copytree(minilm_dir, tmp_path / "checkpoint-00000010" / "hf")
    found = resolve_init(str(tmp_path / "checkpoint-00000010"), tmp_path / "x")
    assert found == tmp_path / "checkpoint-00000010" / "hf"
    with pytest.raises(InputError, match="expected a HF BERT folder"):
        resolve_init(str(tmp_path), tmp_path / "y")


def test_bad_data_is_one_line_and_exit_code_2_before_ray_starts(tmp_path, capsys):
    assert main(["--preset", "pretrain-bert-tiny-cpu", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest.json" in err[0]
