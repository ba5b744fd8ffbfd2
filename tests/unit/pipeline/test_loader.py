"""pipeline.loader on small synthetic shards written with the real shard schema."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.batch import IGNORE_INDEX, collate
from pipeline.dataset import check_fits, open_dataset, read_shard, split_holdout
from pipeline.errors import InputError
from pipeline.loader import PretrainLoader, eval_batches
from pipeline.schema import length_bin
from tests.helpers import VOCAB, write_dataset


@pytest.fixture()
def data(tmp_path):
    return write_dataset(tmp_path / "data")


def loader_for(path, rank=0, world=1, batch=4, seed=7, prefetch=False, holdout=0):
    ds = open_dataset(str(path))
    train, _ = split_holdout(ds.shards, holdout)
    return PretrainLoader(ds, train, batch, rank=rank, world_size=world, seed=seed,
                          prefetch=prefetch)


def take(it, n):
    return [next(it) for _ in range(n)]


def rows_by_id(path):
    """sample id -> the row as written, to check what batches carry."""
    ds = open_dataset(str(path))
    out = {}
    for meta in ds.shards:
        table = pq.read_table(Path(path) / meta.file).to_pylist()
        for i, r in enumerate(table):
            out[(meta.index << 32) | i] = r
    return out


def test_batches_hold_the_rows_they_name_with_types_masks_and_targets(data):
    truth = rows_by_id(data)
    for batch in take(loader_for(data).iterate(), 10):
        assert batch.input_ids.dtype == torch.int64
        for i, sid in enumerate(batch.sample_ids):
            r = truth[int(sid)]
            n, T = r["num_tokens"], batch.input_ids.shape[1]
            assert batch.input_ids[i, :n].tolist() == r["input_ids"]
            assert batch.input_ids[i, n:].eq(0).all()
            assert batch.attention_mask[i].tolist() == [1] * n + [0] * (T - n)
            sb = r["segment_b_start"]
            assert batch.token_type_ids[i].tolist() == [0] * sb + [1] * (n - sb) + [0] * (T - n)
            k = len(r["masked_lm_positions"])
            assert batch.masked_lm_positions[i, :k].tolist() == r["masked_lm_positions"]
            assert batch.masked_lm_ids[i, :k].tolist() == r["masked_lm_ids"]
            assert batch.masked_lm_ids[i, k:].eq(IGNORE_INDEX).all()
            assert batch.masked_lm_positions[i, k:].eq(0).all()
            assert batch.next_sentence_label[i].item() == r["next_sentence_label"]


def test_batches_pad_to_their_longest_row_not_to_max_length(data):
    for batch in take(loader_for(data).iterate(), 20):
        longest = int(batch.attention_mask.sum(1).max())
        assert batch.input_ids.shape[1] == longest
        assert batch.masked_lm_ids.shape[1] == int((batch.masked_lm_ids != IGNORE_INDEX).sum(1).max())


def test_padding_rounds_up_to_a_multiple_when_asked(data):
    ds = open_dataset(str(data))
    shard = read_shard(ds, ds.shards[0])
    batch = collate(shard, np.array([0, 1, 2]), pad_to_multiple_of=8)
    assert batch.input_ids.shape[1] % 8 == 0
    assert batch.input_ids.shape[1] - int(batch.attention_mask.sum(1).max()) < 8


def test_every_batch_comes_from_one_length_bin(data):
    for batch in take(loader_for(data).iterate(), 40):
        lengths = batch.attention_mask.sum(1).numpy()
        assert len(set(length_bin(lengths, 16).tolist())) == 1


def test_ranks_read_their_own_shards_in_step_on_the_same_bin(data):
    world = 2
    loaders = [loader_for(data, rank=r, world=world) for r in range(world)]
    n = loaders[0].batches_per_epoch(0)
    assert n == loaders[1].batches_per_epoch(0) > 0
    streams = [take(ld.iterate(), n) for ld in loaders]
    for b0, b1 in zip(*streams):
        s0, s1 = set((b0.sample_ids >> 32).tolist()), set((b1.sample_ids >> 32).tolist())
        assert len(s0) == len(s1) == 1 and s0 != s1  # one shard each, never the same one
        l0, l1 = b0.attention_mask.sum(1).numpy(), b1.attention_mask.sum(1).numpy()
        assert set(length_bin(l0, 16).tolist()) == set(length_bin(l1, 16).tolist())


def test_an_epoch_never_repeats_a_sample_and_covers_almost_all(data):
    world = 2
    seen = []
    for r in range(world):
        ld = loader_for(data, rank=r, world=world)
        for b in take(ld.iterate(), ld.batches_per_epoch(0)):
            seen.extend(b.sample_ids.tolist())
    assert len(seen) == len(set(seen))
    # what is skipped is at most (batch - 1) rows per bin per shard, plus rank imbalance
    assert len(seen) >= 4 * 60 - 4 * 4 * (4 - 1 + 1)


def test_resuming_at_position_k_continues_the_same_stream(data):
    full = take(loader_for(data, rank=1, world=2, prefetch=True).iterate(), 70)
    for k in (0, 1, 13, 29, 45, 69):
        resumed = take(loader_for(data, rank=1, world=2).iterate(start=k), 70 - k)
        for a, b in zip(full[k:], resumed):
            assert np.array_equal(a.sample_ids, b.sample_ids)
            assert torch.equal(a.input_ids, b.input_ids)


def test_resume_reads_no_shard_before_its_position(data):
    ld = loader_for(data)
    epoch, q, _ = ld.locate(ld.batches_per_epoch(0) + 3)  # early in the second epoch
    needed = ld.round(epoch, q).shards[0].file
    for p in Path(data).glob("shard-*.parquet"):
        if p.name != needed:
            os.remove(p)  # if the loader touched any of these, it would fail
    batches = take(loader_for(data).iterate(start=ld.batches_per_epoch(0) + 3), 2)
    assert all(len(b) == 4 for b in batches)


def test_epochs_and_seeds_change_the_order_deterministically(data):
    ld = loader_for(data)
    n = ld.batches_per_epoch(0)
    ids = [b.sample_ids.tolist() for b in take(ld.iterate(), 2 * n)]
    assert ids[:n] != ids[n:2 * n]
    again = [b.sample_ids.tolist() for b in take(loader_for(data).iterate(), n)]
    assert again == ids[:n]
    other = [b.sample_ids.tolist() for b in take(loader_for(data, seed=8).iterate(), n)]
    assert other != ids[:n]


def test_without_nsp_the_batch_has_no_next_sentence_label(tmp_path):
    path = write_dataset(tmp_path / "d", nsp=False)
    batch = next(loader_for(path).iterate())
    assert batch.next_sentence_label is None
    assert "next_sentence_label" not in batch.model_inputs()


def test_manifest_that_does_not_fit_the_model_is_refused(data):
    ds = open_dataset(str(data))
    check_fits(ds, vocab_size=VOCAB, max_position_embeddings=64, max_seq_length=64)
    with pytest.raises(InputError, match="vocab has 1000 tokens"):
        check_fits(ds, vocab_size=500, max_position_embeddings=512)
    with pytest.raises(InputError, match="max_position_embeddings 32"):
        check_fits(ds, vocab_size=VOCAB, max_position_embeddings=32)
    with pytest.raises(InputError, match="--max-seq-length 512"):
        check_fits(ds, vocab_size=VOCAB, max_position_embeddings=512, max_seq_length=512)


def test_a_directory_without_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        open_dataset(str(tmp_path))


def test_a_shard_that_disagrees_with_its_manifest_is_refused(data):
    m = json.loads((data / "manifest.json").read_text())
    m["shards"][0]["rows"] += 1
    (data / "manifest.json").write_text(json.dumps(m))
    ds = open_dataset(str(data))
    with pytest.raises(InputError, match="the manifest says 61"):
        read_shard(ds, ds.shards[0])


def test_too_few_shards_for_the_workers_is_refused(data):
    with pytest.raises(InputError, match="every worker needs its own shard"):
        loader_for(data, world=2, holdout=3)


def test_eval_batches_are_fixed_disjoint_and_equal_in_number_per_rank(data):
    ds = open_dataset(str(data))
    _, held = split_holdout(ds.shards, 1)
    per_rank = [eval_batches(ds, held, 8, r, 2, max_samples=50, seed=3) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 3  # 50 // 8 = 6 batches, 3 each
    ids = [s for batches in per_rank for b in batches for s in b.sample_ids.tolist()]
    assert len(ids) == len(set(ids)) == 48
    assert all(s >> 32 == held[0].index for s in ids)
    again = eval_batches(ds, held, 8, 0, 2, max_samples=50, seed=3)
    assert [b.sample_ids.tolist() for b in again] == [b.sample_ids.tolist() for b in per_rank[0]]


def test_reads_a_dataset_from_s3(data, s3_server):
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="loader-test")
    for p in Path(data).iterdir():
        s3.upload_file(str(p), "loader-test", f"ds/{p.name}")
    local = take(loader_for(data, rank=1, world=2).iterate(start=5), 3)
    remote = take(loader_for("s3://loader-test/ds", rank=1, world=2, prefetch=True).iterate(start=5), 3)
    for a, b in zip(local, remote):
        assert torch.equal(a.input_ids, b.input_ids)
