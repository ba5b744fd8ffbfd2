"""PretrainConfig: presets, batch arithmetic, checks, run names, the model a run trains, the
CLI's flags and its one-line errors."""
from __future__ import annotations

import dataclasses

import pytest

from jobs.cli import build_parser
from jobs.config import ConfigError, from_dict, load_preset, presets
from jobs.pretrain.config import PretrainConfig
from jobs.pretrain.model import model_config
from jobs.train.sources import resolve_model
from pipeline.dataset import open_dataset
from pipeline.errors import InputError
from tests.helpers import job, write_dataset

main = job("pretrain")


@pytest.mark.parametrize("name", sorted(presets("pretrain")))
def test_every_shipped_preset_parses_and_builds_a_deepspeed_config(name):
    cfg = dataclasses.replace(load_preset(PretrainConfig, "pretrain", name),
                              data="somewhere").validate()
    ds = cfg.deepspeed_json(gpu=True)
    assert ds["train_batch_size"] == cfg.batch_size == (
        ds["train_micro_batch_size_per_gpu"] * cfg.num_workers * ds["gradient_accumulation_steps"])
    assert ds["zero_optimization"]["stage"] == cfg.zero_stage
    if cfg.deepspeed_config:  # the tuning file is merged in, our keys untouched
        assert "overlap_comm" in ds["zero_optimization"]


def test_the_cli_has_the_flags_the_issue_names():
    flags = {a for action in build_parser("pretrain")._actions for a in action.option_strings}
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
    ({"zero_stage": 4}, "zero_stage must be one of 0..3"),
    ({"data": ""}, "no data given"),
    ({"run_name": "a b"}, "run_name"),
    ({"model_alias": "Latest"}, "MLflow reserves 'latest'"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_inconsistent_options_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig(**{"data": "d", **values}).validate()


def test_the_default_run_name_is_stable_and_follows_the_config():
    a, b = PretrainConfig(data="d", model="bert-tiny"), PretrainConfig(data="d", model="bert-tiny")
    assert a.default_run_name() == b.default_run_name()
    assert a.default_run_name().startswith("pretrain-bert-tiny-")
    assert PretrainConfig(data="d", model="bert-tiny", learning_rate=1.0).default_run_name() \
        != a.default_run_name()


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
    init = resolve_model(str(minilm_dir), None, tmp_path / "init").hf_dir
    with pytest.raises(InputError, match="vocab.txt differs from the data's"):
        model_config(PretrainConfig(data="d", init_from=str(minilm_dir)), ds, init)


def test_bad_data_is_one_line_and_exit_code_2_before_ray_starts(tmp_path, capsys):
    assert main(["--preset", "bert-tiny-cpu", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest.json" in err[0]


def test_model_names_an_architecture_and_points_weights_at_init_from(tmp_path, minilm_dir):
    ds = open_dataset(str(write_dataset(tmp_path / "d")))
    with pytest.raises(ConfigError, match="to start from a model's weights pass --init-from"):
        model_config(PretrainConfig(data="d", model=str(minilm_dir)), ds, None)


def test_renamed_keys_keep_working_with_a_warning(capsys):
    cfg = from_dict(PretrainConfig, {"data": "d", "grad_clip": 0.5})
    assert cfg.max_grad_norm == 0.5
    assert "'grad_clip' is deprecated, use 'max_grad_norm'" in capsys.readouterr().err


def test_test_knobs_are_hidden_from_help():
    text = build_parser("pretrain").format_help()
    assert "--fail-at-step" not in text and "--grad-clip" not in text
    assert build_parser("pretrain").parse_args(["--fail-at-step", "3"]).fail_at_step == 3


def test_pretraining_dropout_is_a_training_rate_and_the_saved_config_keeps_berts(tmp_path):
    import json

    import torch

    import model.hf
    from jobs.pretrain.model import build_model
    ds = open_dataset(str(write_dataset(tmp_path / "d")))
    cfg = PretrainConfig(data="d", model="bert-tiny", dropout=0.0)
    mc = model_config(cfg, ds, None)
    ids = torch.randint(5, mc.vocab_size, (2, 16))
    plain, dropless = build_model(mc, None, seed=1), build_model(mc, None, seed=1, dropout=0.0)
    assert torch.equal(plain.state_dict()["bert.embeddings.word_embeddings.weight"],
                       dropless.state_dict()["bert.embeddings.word_embeddings.weight"])
    train = dropless.train()(input_ids=ids).prediction_logits
    assert torch.equal(train, dropless.eval()(input_ids=ids).prediction_logits)  # no dropout
    assert not torch.equal(plain.train()(input_ids=ids).prediction_logits, train)  # BERT's 0.1
    model.hf.save(dropless, tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.1
