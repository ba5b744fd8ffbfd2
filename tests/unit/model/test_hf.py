"""`model.hf`: our folders load in transformers, transformers' folders (and a real BERT) load
in ours, with the same outputs."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import model
import model.hf
from model import BertConfig, BertForPreTraining, BertModel
from model.config import ModelError

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SENTENCES = [
    ("The quick brown fox jumps over the lazy dog.", "It was not amused."),
    ("Paris is the capital and most populous city of France.", "It lies on the Seine."),
    ("BERT is pretrained with masked language modelling.", None),
]


def tiny_vocab() -> list[str]:
    return SPECIALS + [f"tok{i}" for i in range(TINY["vocab_size"] - len(SPECIALS))]


def ids_batch():
    ids = torch.randint(5, 99, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    return dict(input_ids=ids * mask, attention_mask=mask)


@pytest.mark.parametrize("ours_cls,auto", [
    (model.BertForPreTraining, "AutoModelForPreTraining"),
    (model.BertModel, "AutoModel"),
    (model.BertForSequenceClassification, "AutoModelForSequenceClassification"),
    (model.BertForTokenClassification, "AutoModelForTokenClassification"),
    (model.BertForQuestionAnswering, "AutoModelForQuestionAnswering"),
    (model.BertForMultipleChoice, "AutoModelForMultipleChoice"),
])
def test_saved_folder_loads_in_transformers_with_no_missing_or_unexpected_keys(
        tmp_path, ours_cls, auto):
    ours = ours_cls(BertConfig(**TINY)).eval()
    model.hf.save(ours, tmp_path, vocab=tiny_vocab())
    theirs, info = getattr(transformers, auto).from_pretrained(tmp_path, output_loading_info=True)
    assert type(theirs).__name__ == ours_cls.__name__
    assert info["missing_keys"] in ([], set()) and info["unexpected_keys"] in ([], set())
    assert not info["mismatched_keys"]
    batch = ids_batch()
    if ours_cls is model.BertForMultipleChoice:
        batch = {k: v[:, None].expand(-1, 2, -1).contiguous() for k, v in batch.items()}
    a, b = ours(**batch), theirs.eval()(**batch)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)


def test_saved_tokenizer_loads_as_a_fast_bert_tokenizer_with_the_casing_asked_for(
        tmp_path, bert_vocab):
    ours = BertModel(BertConfig.from_preset("bert-tiny"))
    model.hf.save(ours, tmp_path / "uncased", vocab=bert_vocab)
    model.hf.save(ours, tmp_path / "cased", vocab=bert_vocab, do_lower_case=False)
    uncased = transformers.AutoTokenizer.from_pretrained(tmp_path / "uncased")
    cased = transformers.AutoTokenizer.from_pretrained(tmp_path / "cased")
    assert uncased.is_fast and type(uncased).__name__ in ("BertTokenizer", "BertTokenizerFast")
    assert uncased.tokenize("Hello World") == ["hello", "world"]
    assert cased.tokenize("Hello")[0] != "hello"  # capital H is not in the uncased vocab
    enc = uncased("Hello world", "second")
    assert enc["input_ids"][0] == uncased.cls_token_id == 101
    assert enc["token_type_ids"][-1] == 1
    assert uncased.mask_token == "[MASK]" and uncased.model_max_length == 512


def test_transformers_folders_load_from_safetensors_bin_and_shards(tmp_path):
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(**TINY)
    theirs = transformers.BertForPreTraining(hf_cfg).eval()
    theirs.save_pretrained(tmp_path / "st")
    state = {k: v for k, v in theirs.state_dict().items()
             if not k.startswith("cls.predictions.decoder")}
    for name in ("bin", "sharded"):
        (tmp_path / name).mkdir()
        hf_cfg.to_json_file(tmp_path / name / "config.json")
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:10],
              "model-00002-of-00002.safetensors": keys[10:]}
    for file, ks in shards.items():
        save_file({k: state[k].contiguous() for k in ks}, tmp_path / "sharded" / file)
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    batch = ids_batch()
    expected = theirs(**batch).prediction_logits
    for name in ("st", "bin", "sharded"):
        ours = model.hf.load(tmp_path / name).eval()
        torch.testing.assert_close(ours(**batch).prediction_logits, expected,
                                   atol=1e-5, rtol=1e-5, msg=name)


def test_a_bare_encoder_checkpoint_loads_into_a_head_model_and_back(tmp_path):
    encoder = BertModel(BertConfig(**TINY)).eval()
    model.hf.save(encoder, tmp_path / "enc")
    clf = model.hf.load(tmp_path / "enc", cls=model.BertForSequenceClassification, num_labels=4)
    assert clf.classifier.out_features == 4
    torch.testing.assert_close(clf.bert.embeddings.word_embeddings.weight,
                               encoder.embeddings.word_embeddings.weight)
    model.hf.save(clf, tmp_path / "clf")
    back = model.hf.load(tmp_path / "clf", cls=BertModel).eval()
    batch = ids_batch()
    torch.testing.assert_close(back(**batch).last_hidden_state,
                               encoder(**batch).last_hidden_state)


def test_old_tf_layernorm_names_gamma_beta_are_read():
    ours = BertModel(BertConfig(**TINY))
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                       "LayerNorm.beta"): v + 1
             for k, v in ours.state_dict().items()}
    fresh = BertModel(BertConfig(**TINY))
    assert model.hf.copy_state(fresh, state) == ([], [])
    torch.testing.assert_close(fresh.embeddings.LayerNorm.weight,
                               ours.embeddings.LayerNorm.weight + 1)


def test_bad_folders_are_one_line_input_errors(tmp_path):
    with pytest.raises(ModelError, match="not a directory"):
        model.hf.load(tmp_path / "nowhere")
    BertConfig(**TINY).to_json(tmp_path / "config.json")
    with pytest.raises(ModelError, match="no BERT weights"):
        model.hf.load(tmp_path)
    model.hf.save(BertModel(BertConfig(**{**TINY, "hidden_size": 64})), tmp_path / "wide")
    (tmp_path / "wide" / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(ModelError, match="shape"):
        model.hf.load(tmp_path / "wide")
    with pytest.raises(ModelError, match=r"\[MASK\]"):
        model.hf.save(BertModel(BertConfig(**TINY)), tmp_path / "v", vocab=["[PAD]", "a"])


def real_batch(tokenizer_dir):
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    a = [s for s, _ in SENTENCES]
    b = [t for _, t in SENTENCES]
    encs = [tok(x, y) if y else tok(x) for x, y in zip(a, b)]
    return tok.pad(encs, return_tensors="pt")  # padded: lengths differ


def test_real_minilm_hidden_states_match_transformers(minilm_dir):
    batch = real_batch(minilm_dir)
    assert (batch["attention_mask"] == 0).any()
    theirs = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ours = model.hf.load(minilm_dir, cls=BertModel).eval()
    with torch.no_grad():
        a = ours(**batch, output_hidden_states=True)
        b = theirs(**batch, output_hidden_states=True)
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-4, rtol=1e-4)


def test_real_minilm_round_trip_through_our_save_gives_transformers_the_same_outputs(
        minilm_dir, tmp_path):
    ours = model.hf.load(minilm_dir, cls=BertForPreTraining).eval()  # heads: newly initialized
    model.hf.save(ours, tmp_path, vocab=minilm_dir / "vocab.txt")
    batch = real_batch(minilm_dir)
    assert torch.equal(real_batch(tmp_path)["input_ids"], batch["input_ids"])
    original = transformers.BertModel.from_pretrained(minilm_dir).eval()
    again, info = transformers.AutoModelForPreTraining.from_pretrained(
        tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        want = original(**batch).last_hidden_state
        got = again.eval().bert(**batch).last_hidden_state
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again(**batch).prediction_logits,
                                   ours(**batch).prediction_logits, atol=1e-4, rtol=1e-4)
