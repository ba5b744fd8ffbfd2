"""Every model class against transformers' own, built from the same random tiny config.

The weights are copied from the transformers model into ours through the state dict (so the
parameter names must be identical); outputs (fp32, eval mode) and the gradient of every
parameter, by name, after one backward pass must agree within 1e-5, on a batch with padding.
"""
from __future__ import annotations

import pytest
import torch

import model
from model import BertConfig
from model.hf import copy_state

transformers = pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)
# transformers' own BERT tests use this size: the whole file runs in seconds
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)
B, T, V = 3, 11, 99


def tiny_config(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, **overrides})


def padded_batch(seed: int = 0) -> dict:
    """Three pairs of different lengths: 11, 8 and 4 real tokens, [PAD] = 0 after them."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, V, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, 8:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 0
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    token_type_ids[0, 6:] = token_type_ids[1, 5:8] = token_type_ids[2, 2:4] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def pair(ours_cls, hf_cls, seed: int = 0, hf_attn: str = "sdpa", **cfg_overrides):
    """(ours, theirs) in eval mode with identical weights, copied theirs -> ours by name."""
    cfg = tiny_config(**cfg_overrides)
    torch.manual_seed(seed)
    hf_cfg = transformers.BertConfig.from_dict(cfg.to_hf_dict())
    hf_cfg._attn_implementation = hf_attn
    theirs = hf_cls(hf_cfg).eval()
    ours = ours_cls(cfg).eval()
    missing, unexpected = copy_state(ours, theirs.state_dict())
    assert missing == [] and unexpected == []
    return ours, theirs


def assert_same_grads(ours, theirs) -> None:
    ours_params = dict(ours.named_parameters())
    theirs_params = dict(theirs.named_parameters())
    assert ours_params.keys() == theirs_params.keys()
    for name, p in ours_params.items():
        q = theirs_params[name]
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None, f"{name}: no gradient"
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("hf_attn", ["eager", "sdpa"])
def test_bert_model_matches_transformers_outputs_hidden_states_and_grads(hf_attn):
    ours, theirs = pair(model.BertModel, transformers.BertModel, hf_attn=hf_attn)
    batch = padded_batch()
    a = ours(**batch, output_hidden_states=True)
    b = theirs(**batch, output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, **TOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, **TOL)
    assert len(a.hidden_states) == len(b.hidden_states) == TINY["num_hidden_layers"] + 1
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, **TOL)
    w = torch.randn_like(a.last_hidden_state)  # a loss that touches every output
    ((a.last_hidden_state * w).sum() + a.pooler_output.sum()).backward()
    ((b.last_hidden_state * w).sum() + b.pooler_output.sum()).backward()
    assert_same_grads(ours, theirs)


def test_pretraining_with_hf_labels_matches_transformers_logits_loss_and_grads():
    ours, theirs = pair(model.BertForPreTraining, transformers.BertForPreTraining)
    batch = padded_batch()
    labels = torch.full((B, T), -100)
    labels[0, [1, 5, 9]] = torch.tensor([7, 8, 9])
    labels[1, [2, 6]] = torch.tensor([10, 11])
    labels[2, 3] = 12
    nsp = torch.tensor([0, 1, 1])
    a = ours(**batch, labels=labels, next_sentence_label=nsp)
    b = theirs(**batch, labels=labels, next_sentence_label=nsp)
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits, **TOL)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    a.loss.backward()
    b.loss.backward()
    assert_same_grads(ours, theirs)


def test_mlm_at_masked_positions_equals_full_vocab_loss_with_ignored_labels():
    ours, theirs = pair(model.BertForPreTraining, transformers.BertForPreTraining, seed=1)
    batch = padded_batch(seed=1)
    # sparse targets, padded to P = 3 with position 0 / id -100
    positions = torch.tensor([[1, 5, 9], [2, 6, 0], [3, 0, 0]])
    ids = torch.tensor([[7, 8, 9], [10, 11, -100], [12, -100, -100]])
    labels = torch.full((B, T), -100)
    for b in range(B):
        for p, i in zip(positions[b], ids[b]):
            if i != -100:
                labels[b, p] = i
    nsp = torch.tensor([1, 0, 1])
    a = ours(**batch, masked_lm_positions=positions, masked_lm_ids=ids, next_sentence_label=nsp)
    b = theirs(**batch, labels=labels, next_sentence_label=nsp)
    assert a.prediction_logits.shape == (B, 3, V)
    gathered = b.prediction_logits.gather(1, positions[..., None].expand(-1, -1, V))
    torch.testing.assert_close(a.prediction_logits, gathered, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    torch.testing.assert_close(a.mlm_loss + a.nsp_loss, a.loss)
    a.loss.backward()
    b.loss.backward()
    assert_same_grads(ours, theirs)


@pytest.mark.parametrize("num_labels,labels", [
    (3, torch.tensor([0, 2, 1])),  # single-label classification
    (1, torch.tensor([0.5, -1.0, 2.0])),  # regression
    (2, torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])),  # multi-label
], ids=["classification", "regression", "multi-label"])
def test_sequence_classification_matches_transformers(num_labels, labels):
    ours, theirs = pair(model.BertForSequenceClassification,
                        transformers.BertForSequenceClassification, num_labels=num_labels)
    batch = padded_batch()
    a = ours(**batch, labels=labels)
    b = theirs(**batch, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    a.loss.backward()
    b.loss.backward()
    assert_same_grads(ours, theirs)


def test_token_classification_matches_transformers():
    ours, theirs = pair(model.BertForTokenClassification, transformers.BertForTokenClassification,
                        num_labels=5)
    batch = padded_batch()
    labels = torch.randint(0, 5, (B, T))
    labels[batch["attention_mask"] == 0] = -100
    a = ours(**batch, labels=labels)
    b = theirs(**batch, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    a.loss.backward()
    b.loss.backward()
    assert_same_grads(ours, theirs)


def test_question_answering_matches_transformers_including_no_answer_and_cut_off_spans():
    ours, theirs = pair(model.BertForQuestionAnswering, transformers.BertForQuestionAnswering)
    batch = padded_batch()
    start = torch.tensor([4, 0, 50])  # an answer, "no answer" at [CLS], an answer cut off
    end = torch.tensor([6, 0, 52])
    a = ours(**batch, start_positions=start, end_positions=end)
    b = theirs(**batch, start_positions=start, end_positions=end)
    torch.testing.assert_close(a.start_logits, b.start_logits, **TOL)
    torch.testing.assert_close(a.end_logits, b.end_logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    a.loss.backward()
    b.loss.backward()
    assert_same_grads(ours, theirs)


def test_multiple_choice_matches_transformers():
    ours, theirs = pair(model.BertForMultipleChoice, transformers.BertForMultipleChoice)
    flat = padded_batch()  # 3 sequences = 1 question with 3 choices ... twice, shuffled
    batch = {k: torch.stack([v, v.flip(0)]) for k, v in flat.items()}  # (2, 3, T)
    labels = torch.tensor([2, 0])
    a = ours(**batch, labels=labels)
    b = theirs(**batch, labels=labels)
    assert a.logits.shape == (2, 3)
    torch.testing.assert_close(a.logits, b.logits, **TOL)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    a.loss.backward()
    b.loss.backward()
    assert_same_grads(ours, theirs)


def test_hf_code_reads_our_outputs_by_key_and_position():
    ours, theirs = pair(model.BertForPreTraining, transformers.BertForPreTraining)
    batch = padded_batch()
    a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a["prediction_logits"], b["prediction_logits"], **TOL)
    torch.testing.assert_close(a[0], b[0], **TOL)  # no loss: the first field is the logits
    torch.testing.assert_close(ours(**batch, return_dict=False)[1], b[1], **TOL)
