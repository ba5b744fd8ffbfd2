"""Packed batches from the loader: every instance laid out exactly, deterministic,
resume-exact, and a training step on them gives the loss of the same instances unpacked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.train.engine import TorchEngine
from model import BertConfig, BertForPreTraining
from model.packing import cu_seqlens_from_position_ids
from pipeline.batch import IGNORE_INDEX, collate, collate_packed, concat
from pipeline.dataset import open_dataset, read_shard, split_holdout
from pipeline.loader import PretrainLoader, eval_batches
from pipeline.packing import pack_rows
from tests.helpers import VOCAB, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("packing") / "data", max_len=64)


def loader_for(path, packing=True, rank=0, world=1, batch=8, prefetch=False, **kw):
    ds = open_dataset(str(path))
    return PretrainLoader(ds, ds.shards, batch, rank=rank, world_size=world, seed=3,
                          packing=packing, prefetch=prefetch, **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_pack_rows_places_every_instance_once_within_the_row_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 129, size=300).tolist()
    rows = pack_rows(lengths, 128)
    assert sorted(i for r in rows for i in r) == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert all(r == sorted(r) for r in rows) and [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert len(rows) <= 1.05 * sum(lengths) / 128 + 1  # near the bound for a mixed load
    assert pack_rows(lengths, 128) == rows  # a pure function of the lengths
    assert pack_rows([60, 70, 68, 58], 128) == [[0, 2], [1, 3]]  # best fit, not first fit
    with pytest.raises(ValueError, match="129 tokens"):
        pack_rows([10, 129], 128)


def test_packed_batches_hold_each_named_instance_exactly(data):
    truth = {}
    ds = open_dataset(str(data))
    for meta in ds.shards:
        for i, r in enumerate(pq.read_table(Path(data) / meta.file).to_pylist()):
            truth[(meta.index << 32) | i] = r
    batches = take(loader_for(data).iterate(), 6)
    assert sum(b.input_ids.shape[0] for b in batches) < sum(len(b) for b in batches)
    for batch in batches:
        assert batch.packed
        laid_out = []
        for row in range(batch.input_ids.shape[0]):
            fill = int(batch.attention_mask[row].sum())
            assert batch.attention_mask[row, :fill].all()  # instances back to back, then padding
            starts = [int(c) for c in batch.cls_positions[row] if c >= 0]
            k = 0  # the row's MLM targets follow its instances in order
            for slot, (a, b) in enumerate(zip(starts, starts[1:] + [fill])):
                ids = batch.input_ids[row, a:b].tolist()
                sid = next(int(s) for s in batch.sample_ids if truth[int(s)]["input_ids"] == ids)
                laid_out.append(sid)
                r, n = truth[sid], b - a
                sb = r["segment_b_start"]
                assert batch.token_type_ids[row, a:b].tolist() == [0] * sb + [1] * (n - sb)
                assert batch.position_ids[row, a:b].tolist() == list(range(n))
                p = len(r["masked_lm_positions"])
                positions = batch.masked_lm_positions[row, k:k + p] - a  # they index the row
                assert positions.tolist() == r["masked_lm_positions"]
                assert batch.masked_lm_ids[row, k:k + p].tolist() == r["masked_lm_ids"]
                assert batch.next_sentence_label[row, slot] == r["next_sentence_label"]
                k += p
            assert batch.masked_lm_ids[row, k:].eq(IGNORE_INDEX).all()
            assert batch.next_sentence_label[row, len(starts):].eq(IGNORE_INDEX).all()
        assert sorted(laid_out) == sorted(batch.sample_ids.tolist())  # each exactly once
        assert batch.num_predictions == int((batch.masked_lm_ids != IGNORE_INDEX).sum())
        assert batch.num_tokens == int(batch.attention_mask.sum()) == int(batch.seq_lens.sum())
        cu, longest = cu_seqlens_from_position_ids(batch.position_ids, batch.attention_mask)
        assert torch.equal(batch.cu_seqlens, cu) and batch.max_seqlen == longest


def test_model_inputs_keep_max_seqlen_a_python_int(data):
    batch = next(loader_for(data).iterate())
    inputs = batch.model_inputs("cpu")
    assert type(inputs["max_seqlen"]) is int and inputs["cu_seqlens"].dtype == torch.int32
    assert {"position_ids", "cls_positions", "cu_seqlens"} <= set(inputs)


def test_resuming_a_packed_stream_at_k_gives_the_same_packed_batches(data):
    full = take(loader_for(data, rank=1, world=2, prefetch=True).iterate(), 40)
    for k in (0, 1, 7, 19, 39):
        resumed = take(loader_for(data, rank=1, world=2).iterate(start=k), 40 - k)
        for a, b in zip(full[k:], resumed):
            assert np.array_equal(a.sample_ids, b.sample_ids)
            for name in ("input_ids", "position_ids", "cls_positions", "masked_lm_positions",
                         "next_sentence_label", "cu_seqlens"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_a_packed_epoch_never_repeats_an_instance_and_ranks_keep_step(data):
    world = 2
    loaders = [loader_for(data, rank=r, world=world) for r in range(world)]
    n = loaders[0].batches_per_epoch(0)
    assert n == loaders[1].batches_per_epoch(0) > 0
    seen = [sid for ld in loaders for b in take(ld.iterate(), n) for sid in b.sample_ids.tolist()]
    assert len(seen) == len(set(seen)) >= 4 * 60 - 2 * 2 * 8  # at most B-1 rows left per shard
    assert all(len(b) == 8 for b in take(loaders[0].iterate(), n))  # B instances per batch


def test_the_loader_reports_padding_as_laid_out_and_one_instance_per_row(data):
    packed, binned = loader_for(data).padding(), loader_for(data, packing=False).padding()
    assert 0 < packed["padding_fraction"] < packed["padding_fraction_unpacked"] < 1
    assert binned["padding_fraction"] == pytest.approx(binned["padding_fraction_unpacked"])
    b = next(loader_for(data).iterate())
    assert b.padding_fraction == pytest.approx(1 - b.num_tokens / b.input_ids.numel())
    assert b.padding_fraction_unpacked == pytest.approx(
        1 - b.num_tokens / (len(b) * int(b.seq_lens.max())))


def tiny_model(seed=0) -> BertForPreTraining:
    torch.manual_seed(seed)
    return BertForPreTraining(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).train()


def test_training_on_the_loaders_packed_batches_gives_the_unpacked_losses(data):
    """Three AdamW steps on packed loader batches and on the same instances unpacked."""
    ds = open_dataset(str(data))
    shards = {m.index: read_shard(ds, m) for m in ds.shards}
    engines = {}
    for name in ("packed", "unpacked"):
        m = tiny_model()
        engines[name] = TorchEngine(m, torch.optim.AdamW(m.parameters(), lr=1e-3),
                                    max_grad_norm=1.0)
    for batch in take(loader_for(data).iterate(), 3):
        shard = shards[int(batch.sample_ids[0] >> 32)]
        plain = collate(shard, batch.sample_ids & 0xFFFFFFFF, ds.nsp)
        assert np.array_equal(plain.sample_ids, batch.sample_ids)
        losses = {}
        for name, b in (("packed", batch), ("unpacked", plain)):
            out = engines[name](**b.model_inputs())
            engines[name].backward(out.loss)
            engines[name].step()
            losses[name] = out
        for k in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
            torch.testing.assert_close(getattr(losses["packed"], k),
                                       getattr(losses["unpacked"], k), atol=1e-5, rtol=1e-5)
    a, b = (dict(e.module.named_parameters()) for e in engines.values())
    for n in a:  # three updates later the weights still agree
        torch.testing.assert_close(a[n], b[n], atol=1e-5, rtol=1e-4, msg=n)


def test_packed_eval_batches_hold_the_same_instances_and_give_the_same_metrics(data):
    ds = open_dataset(str(data))
    _, held = split_holdout(ds.shards, 2)
    plain = eval_batches(ds, held, 16, 0, 1, 64, seed=1)
    packed = eval_batches(ds, held, 16, 0, 1, 64, seed=1, packing=True)
    m = tiny_model().eval()
    assert len(plain) == len(packed) > 0
    for a, b in zip(plain, packed):
        assert np.array_equal(a.sample_ids, b.sample_ids) and b.packed
        torch.testing.assert_close(m(**b.model_inputs()).loss, m(**a.model_inputs()).loss,
                                   atol=1e-5, rtol=1e-5)
    assert sum(b.input_ids.numel() for b in packed) < sum(b.input_ids.numel() for b in plain)


def test_concatenated_packed_batches_get_the_segments_of_their_wider_grid(data):
    ds = open_dataset(str(data))
    s0, s1 = read_shard(ds, ds.shards[0]), read_shard(ds, ds.shards[1])
    both = concat([collate_packed(s0, np.arange(5), 64), collate_packed(s1, np.arange(20, 40), 64)])
    cu, longest = cu_seqlens_from_position_ids(both.position_ids, both.attention_mask)
    assert torch.equal(both.cu_seqlens, cu) and both.max_seqlen == longest
    assert len(both) == 25 and both.next_sentence_label.shape == both.cls_positions.shape


def test_an_error_while_building_batches_in_the_background_reaches_the_consumer(data,
                                                                                  monkeypatch):
    ld = loader_for(data, prefetch=True)
    monkeypatch.setattr(ld, "make_batch", lambda shard, rows, epoch=0: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        next(ld.iterate())


def test_the_background_batch_thread_stops_when_the_consumer_is_done(data):
    import gc
    import threading
    before = {t for t in threading.enumerate() if t.name == "batch-prefetch"}
    it = loader_for(data, prefetch=True).iterate()
    next(it)
    it.close()
    it2 = loader_for(data, prefetch=True).iterate()
    next(it2)
    del it2  # dropped without close(): the thread must not keep running forever
    gc.collect()
    for t in {t for t in threading.enumerate() if t.name == "batch-prefetch"} - before:
        t.join(timeout=5)
        assert not t.is_alive()
