"""Packed rows are exact: every sequence gets what it gets unpacked (fp32 CPU, <= 1e-5).

The same six sequences go through the model as a plain padded batch (one per row) and packed
three rows deep; per sequence, hidden states, MLM and NSP logits and loss terms agree, and
a training step gives the same loss and the same gradient for every parameter.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import BertForPreTraining, BertModel
from tests.unit.model.packed_data import LENGTHS, make_sequences, packed, tiny_config, unpacked

TOL = dict(atol=1e-5, rtol=1e-5)
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids",
                  "cu_seqlens", "max_seqlen", "cls_positions")


def encoder_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ENCODER_INPUTS}


def model_pair(cls=BertForPreTraining, seed: int = 0):
    torch.manual_seed(seed)
    return cls(tiny_config()).eval()


def test_each_packed_sequence_has_its_unpacked_hidden_states_and_pooled_output():
    m = model_pair(BertModel)
    seqs = make_sequences()
    plain = unpacked(seqs)
    pack, where = packed(seqs)
    a = m(**encoder_inputs(plain), output_hidden_states=True)
    b = m(**encoder_inputs(pack), output_hidden_states=True)
    assert b.pooler_output.shape == (3, 3, 32)  # (rows, sequences per row, H)
    for i, (s, w) in enumerate(zip(seqs, where)):
        n = len(s.ids)
        for x, y in zip(a.hidden_states, b.hidden_states):  # embeddings and every layer
            torch.testing.assert_close(y[w.row, w.offset:w.offset + n], x[i, :n], **TOL)
        torch.testing.assert_close(b.pooler_output[w.row, w.slot], a.pooler_output[i], **TOL)


def test_each_packed_sequence_has_its_unpacked_mlm_and_nsp_logits_and_loss_terms():
    m = model_pair()
    seqs = make_sequences(seed=1)
    plain = unpacked(seqs)
    pack, where = packed(seqs)
    a, b = m(**plain), m(**pack)
    assert b.seq_relationship_logits.shape == (3, 3, 2)
    for i, (s, w) in enumerate(zip(seqs, where)):
        p = len(s.mlm_pos)
        mlm_a = a.prediction_logits[i, :p]
        mlm_b = b.prediction_logits[w.row, w.first_prediction:w.first_prediction + p]
        torch.testing.assert_close(mlm_b, mlm_a, **TOL)
        nsp_a, nsp_b = a.seq_relationship_logits[i], b.seq_relationship_logits[w.row, w.slot]
        torch.testing.assert_close(nsp_b, nsp_a, **TOL)
        # the sequence's share of each loss: summed MLM NLL of its targets, its NSP NLL
        for x, y, t in ((mlm_a, mlm_b, s.mlm_ids), (nsp_a[None], nsp_b[None],
                                                      torch.tensor([s.nsp]))):
            torch.testing.assert_close(F.cross_entropy(y, t, reduction="sum"),
                                       F.cross_entropy(x, t, reduction="sum"), **TOL)
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), **TOL, msg=name)


def test_a_packed_training_step_gives_the_unpacked_loss_and_gradients():
    torch.manual_seed(0)
    plain_model = BertForPreTraining(tiny_config()).train()  # dropout probabilities are 0
    packed_model = BertForPreTraining(tiny_config()).train()
    packed_model.load_state_dict(plain_model.state_dict())
    seqs = make_sequences(seed=2)
    pack, _ = packed(seqs)
    a, b = plain_model(**unpacked(seqs)), packed_model(**pack)
    torch.testing.assert_close(b.loss, a.loss, **TOL)
    a.loss.backward()
    b.loss.backward()
    grads = dict(packed_model.named_parameters())
    for name, p in plain_model.named_parameters():
        assert p.grad is not None and grads[name].grad is not None, name
        torch.testing.assert_close(grads[name].grad, p.grad, **TOL, msg=name)


def test_one_sequence_per_row_said_the_packed_way_equals_the_plain_path_exactly():
    m = model_pair()
    seqs = make_sequences(seed=3)
    plain = unpacked(seqs)
    pack, _ = packed(seqs, rows=[(i,) for i in range(len(seqs))], pad=0)
    for k in ("input_ids", "attention_mask", "token_type_ids", "masked_lm_positions",
              "masked_lm_ids"):
        assert torch.equal(pack[k], plain[k]), k  # the same batch, plus position ids etc.
    a, b = m(**plain), m(**pack)
    assert torch.equal(b.prediction_logits, a.prediction_logits)
    assert torch.equal(b.seq_relationship_logits[:, 0], a.seq_relationship_logits)
    assert torch.equal(b.mlm_loss, a.mlm_loss)
    torch.testing.assert_close(b.nsp_loss, a.nsp_loss, atol=1e-7, rtol=1e-7)  # sum/n vs mean
    ha = m.bert(**encoder_inputs(plain)).last_hidden_state
    hb = m.bert(**encoder_inputs(pack)).last_hidden_state
    real = plain["attention_mask"].bool()  # padding differs: its position ids are 0 here
    assert torch.equal(hb[real], ha[real])


def test_attention_never_crosses_a_sequence_in_a_packed_row():
    m = model_pair(BertModel)
    seqs = make_sequences(seed=4)
    pack, where = packed(seqs)
    before = m(**encoder_inputs(pack)).last_hidden_state
    w0, w1 = where[0], where[1]  # sequences 0 and 1 share row 0
    pack["input_ids"][w0.row, w0.offset + 1:w0.offset + len(seqs[0].ids)] = 7  # rewrite seq 0
    after = m(**encoder_inputs(pack)).last_hidden_state
    span1 = slice(w1.offset, w1.offset + len(seqs[1].ids))
    assert torch.equal(after[w1.row, span1], before[w1.row, span1])  # its neighbour: unmoved
    assert not torch.allclose(after[w0.row, 1:len(seqs[0].ids)],
                              before[w0.row, 1:len(seqs[0].ids)])


def test_gradient_checkpointing_of_packed_rows_gives_the_same_gradients():
    torch.manual_seed(0)
    a = BertForPreTraining(tiny_config()).train()
    b = BertForPreTraining(a.config).train()
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing_enable()
    pack, _ = packed(make_sequences(seed=5))
    a(**pack).loss.backward()
    b(**pack).loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_attention_dropout_applies_to_packed_rows_in_training_only():
    torch.manual_seed(0)
    m = BertModel(tiny_config(attention_probs_dropout_prob=0.5))  # hidden dropout stays 0
    inputs = encoder_inputs(packed(make_sequences())[0])
    m.train()
    assert not torch.equal(m(**inputs).last_hidden_state, m(**inputs).last_hidden_state)
    m.eval()
    assert torch.equal(m(**inputs).last_hidden_state, m(**inputs).last_hidden_state)


def test_packed_nsp_labels_need_matching_cls_positions():
    m = model_pair()
    pack, _ = packed(make_sequences())
    with pytest.raises(ValueError, match="shape of cls_positions"):
        m(**{**pack, "next_sentence_label": pack["next_sentence_label"][:, :2]})
    with pytest.raises(ValueError, match="needs cls_positions"):
        m(**{k: v for k, v in pack.items() if k != "cls_positions"})


def test_packed_batch_without_any_nsp_label_has_zero_nsp_loss_not_nan():
    m = model_pair()
    pack, _ = packed(make_sequences())
    out = m(**{**pack, "next_sentence_label": torch.full_like(pack["cls_positions"], -100)})
    assert out.nsp_loss.item() == 0.0 and torch.isfinite(out.loss)


def test_test_data_packs_every_sequence_once_with_padding_after_each_row():
    pack, where = packed(make_sequences())
    assert sorted((w.row, w.offset) for w in where) == sorted(set((w.row, w.offset)
                                                                 for w in where))
    assert int(pack["attention_mask"].sum()) == sum(LENGTHS)
    assert (pack["attention_mask"][:, -1] == 0).all()
