"""`BertConfig`: presets, HF config.json in and out, parameter and FLOP counts."""
from __future__ import annotations

import json

import pytest
import torch

from model import (
    PRESETS,
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertModel,
    flops,
)
from model.config import ModelError


@pytest.mark.parametrize("name,shape", [
    ("bert-tiny", (2, 128, 2)), ("bert-mini", (4, 256, 4)), ("bert-small", (4, 512, 8)),
    ("bert-medium", (8, 512, 8)), ("bert-base", (12, 768, 12)), ("bert-large", (24, 1024, 16)),
])
def test_presets_have_googles_layer_hidden_head_sizes_and_a_4h_ffn(name, shape):
    cfg = BertConfig.from_preset(name)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == shape
    assert cfg.intermediate_size == 4 * cfg.hidden_size
    assert cfg.vocab_size == 30522 and cfg.max_position_embeddings == 512


def test_from_preset_keyword_arguments_override_fields():
    cfg = BertConfig.from_preset("bert-tiny", vocab_size=1000, hidden_dropout_prob=0.0)
    assert (cfg.vocab_size, cfg.hidden_dropout_prob, cfg.hidden_size) == (1000, 0.0, 128)


def test_unknown_preset_is_an_input_error_naming_the_presets():
    with pytest.raises(ModelError, match="bert-huge.*bert-tiny"):
        BertConfig.from_preset("bert-huge")


def test_invalid_shapes_and_activations_are_input_errors():
    with pytest.raises(ModelError, match="multiple"):
        BertConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ModelError, match="hidden_act"):
        BertConfig(hidden_act="mish")


def test_json_round_trip_keeps_every_field(tmp_path):
    cfg = BertConfig.from_preset("bert-mini", vocab_size=1234, num_labels=3,
                                 id2label={0: "neg", 1: "neu", 2: "pos"})
    cfg.to_json(tmp_path / "config.json", architectures=["BertForSequenceClassification"])
    assert BertConfig.from_json(tmp_path / "config.json") == cfg
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "bert" and written["label2id"] == {"neg": 0, "neu": 1, "pos": 2}


def test_reads_a_real_hf_config_json_ignoring_keys_it_does_not_use(minilm_dir):
    cfg = BertConfig.from_json(minilm_dir / "config.json")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    assert cfg.vocab_size == 30522 and cfg.intermediate_size == 1536


@pytest.mark.parametrize("bad", [{"model_type": "roberta"},
                                 {"position_embedding_type": "relative_key"},
                                 {"is_decoder": True}])
def test_refuses_hf_configs_of_models_it_does_not_implement(bad):
    with pytest.raises(ModelError):
        BertConfig.from_dict({**BertConfig().to_hf_dict(), **bad})


def test_missing_config_json_is_an_input_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        BertConfig.from_json(tmp_path / "config.json")


def test_bert_base_has_110m_and_bert_large_335m_parameters():
    with torch.device("meta"):  # no memory, no init cost
        base = BertModel(BertConfig.from_preset("bert-base")).num_parameters()
        large = BertModel(BertConfig.from_preset("bert-large")).num_parameters()
    assert base == pytest.approx(110e6, rel=0.01)  # 109,482,240
    assert large == pytest.approx(335e6, rel=0.01)  # 335,141,888


@pytest.mark.parametrize("name", list(PRESETS))
def test_analytic_parameter_counts_equal_the_built_models(name):
    cfg = BertConfig.from_preset(name)
    with torch.device("meta"):
        assert BertModel(cfg).num_parameters() == flops.bert_model_params(cfg)
        assert BertForPreTraining(cfg).num_parameters() == flops.pretraining_params(cfg)
        assert BertForQuestionAnswering(cfg).num_parameters() == flops.bert_model_params(
            cfg, pooler=False) + 2 * cfg.hidden_size + 2


def test_bert_large_costs_about_1_9_gflop_per_token_at_seq_128():
    f = flops.pretraining_flops_per_token(BertConfig.from_preset("bert-large"), 128, 20)
    assert 1.8e9 < f < 2.0e9
    # longer sequences pay more attention per token
    assert flops.pretraining_flops_per_token(BertConfig.from_preset("bert-large"), 512, 80) > f
