"""Behaviour of our BERT beyond parity: initialization, masking, losses, QA spans, dtypes."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from model import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    best_spans,
)
from model.pretraining import masked_lm_loss

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)


def tiny(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, **overrides})


def test_initialization_is_berts_normal_002_zero_bias_unit_layernorm_zero_pad_row():
    torch.manual_seed(0)
    m = BertForPreTraining(BertConfig.from_preset("bert-mini", vocab_size=3000))
    w = m.bert.encoder.layer[0].intermediate.dense.weight
    assert w.mean().abs() < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)
    assert not m.bert.encoder.layer[0].attention.self.query.bias.any()
    assert not m.cls.predictions.bias.any()
    ln = m.bert.encoder.layer[1].output.LayerNorm
    assert (ln.weight == 1).all() and not ln.bias.any()
    assert not m.bert.embeddings.word_embeddings.weight[0].any()  # [PAD]


def test_mlm_decoder_is_tied_to_the_word_embeddings_even_after_a_dtype_change():
    m = BertForPreTraining(tiny()).to(torch.bfloat16)
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    assert m.cls.predictions.decoder.bias is m.cls.predictions.bias
    assert "cls.predictions.decoder.weight" not in dict(m.named_parameters())


def test_padding_does_not_change_the_outputs_of_real_tokens():
    m = BertModel(tiny()).eval()
    ids = torch.randint(5, 99, (1, 6))
    short = m(ids, attention_mask=torch.ones(1, 6)).last_hidden_state
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 5)], 1)
    long = m(padded_ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(long[:, :6], short, atol=1e-5, rtol=1e-5)


def test_no_attention_mask_means_every_token_is_real():
    m = BertModel(tiny()).eval()
    ids = torch.randint(5, 99, (2, 7))
    torch.testing.assert_close(m(ids).last_hidden_state,
                               m(ids, attention_mask=torch.ones(2, 7)).last_hidden_state)


def test_dropout_is_active_in_training_and_off_in_eval():
    m = BertModel(tiny(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
    ids = torch.randint(5, 99, (2, 7))
    m.train()
    assert not torch.equal(m(ids).last_hidden_state, m(ids).last_hidden_state)
    m.eval()
    assert torch.equal(m(ids).last_hidden_state, m(ids).last_hidden_state)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = BertForSequenceClassification(tiny(hidden_dropout_prob=0.0,
                                           attention_probs_dropout_prob=0.0))
    b = BertForSequenceClassification(a.config)
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing_enable()
    ids, labels = torch.randint(5, 99, (2, 7)), torch.tensor([0, 1])
    a(ids, labels=labels).loss.backward()
    b(ids, labels=labels).loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_mlm_loss_and_accuracy_count_only_real_targets():
    logits = torch.full((1, 3, 5), -10.0)
    logits[0, 0, 2] = logits[0, 1, 4] = logits[0, 2, 1] = 10.0  # predicts 2, 4, 1
    loss, acc = masked_lm_loss(logits, torch.tensor([[2, 3, -100]]))
    assert acc.item() == 0.5  # one right of two real targets; the -100 slot is ignored
    assert loss.item() == pytest.approx(10.0, abs=1e-3)  # ~0 for the right one, ~20 wrong


def test_a_batch_without_mlm_targets_has_zero_loss_not_nan():
    m = BertForPreTraining(tiny())
    out = m(torch.randint(5, 99, (2, 7)), masked_lm_positions=torch.zeros(2, 3, dtype=torch.long),
            masked_lm_ids=torch.full((2, 3), -100), next_sentence_label=torch.tensor([0, 1]))
    assert out.mlm_loss.item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_pretraining_accepts_uint16_style_positions_and_reports_accuracies():
    m = BertForPreTraining(tiny())
    positions = torch.tensor([[1, 2], [3, 0]], dtype=torch.int32)  # not yet long
    out = m(torch.randint(5, 99, (2, 7)), masked_lm_positions=positions,
            masked_lm_ids=torch.tensor([[5, 6], [7, -100]]),
            next_sentence_label=torch.tensor([0, 1]))
    assert out.prediction_logits.shape == (2, 2, 99)
    assert 0 <= out.mlm_accuracy.item() <= 1 and 0 <= out.nsp_accuracy.item() <= 1
    assert not out.mlm_accuracy.requires_grad
    torch.testing.assert_close(out.loss, out.mlm_loss + out.nsp_loss)


def test_conflicting_mlm_targets_are_refused():
    m = BertForPreTraining(tiny())
    ids = torch.randint(5, 99, (1, 7))
    with pytest.raises(ValueError, match="not both"):
        m(ids, labels=torch.full((1, 7), -100), masked_lm_positions=torch.zeros(1, 2).long(),
          masked_lm_ids=torch.full((1, 2), -100))
    with pytest.raises(ValueError, match="masked_lm_positions"):
        m(ids, masked_lm_ids=torch.full((1, 2), -100))


def test_bf16_forward_and_backward_run_and_loss_stays_fp32():
    m = BertForPreTraining(tiny()).to(torch.bfloat16)
    out = m(torch.randint(5, 99, (2, 7)), labels=torch.randint(5, 99, (2, 7)),
            next_sentence_label=torch.tensor([0, 1]))
    assert out.prediction_logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert torch.isfinite(m.bert.embeddings.word_embeddings.weight.grad.float()).all()


def test_best_spans_picks_the_best_valid_span_and_scores_no_answer_at_cls():
    start = torch.full((2, 8), -5.0)
    end = torch.full((2, 8), -5.0)
    start[0, 2], end[0, 4] = 3.0, 2.0  # best span 2..4
    end[0, 1] = 9.0  # ends before the best start: never paired with it
    start[1, 0] = end[1, 0] = 8.0  # [CLS] wins: "no answer"
    start[1, 6], end[1, 7] = 1.0, 1.0
    s, e, score, null = best_spans(start, end)
    assert (s[0].item(), e[0].item()) == (2, 4) and score[0].item() == pytest.approx(5.0)
    assert (s[1].item(), e[1].item()) == (6, 7)  # the span is never [CLS] itself
    assert null[1] - score[1] > 0 > null[0] - score[0]


def test_best_spans_respects_max_length_and_context_mask():
    start, end = torch.zeros(1, 10), torch.zeros(1, 10)
    start[0, 1], end[0, 8] = 5.0, 5.0  # a long span (8 tokens)
    s, e, _, _ = best_spans(start, end, max_answer_length=4)
    assert e[0] - s[0] < 4
    context = torch.zeros(1, 10, dtype=torch.bool)
    context[0, 5:7] = True  # the passage: tokens 5 and 6
    s, e, _, _ = best_spans(start, end, context_mask=context)
    assert 5 <= s[0] <= e[0] <= 6


def test_model_package_imports_neither_transformers_nor_ray_nor_mlflow():
    code = ("import sys, model, model.hf, model.flops; "
            "bad = [m for m in ('transformers', 'ray', 'mlflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
