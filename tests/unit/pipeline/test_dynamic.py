"""Dynamic masking (pipeline/dynamic.py): Google's statistics, masks that are a function of
(seed, epoch, instance) alone, and a loader that repeats them exactly after a resume."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.prepare import prepare
from pipeline.config import PrepareConfig
from pipeline.dataset import open_dataset, read_shard, split_holdout
from pipeline.dynamic import MaskingSpec, instance_keys, mask_instances, masker_for, uniforms
from pipeline.instances import create_block_instances_flat
from pipeline.loader import PretrainLoader
from pipeline.schema import SPECIAL_TOKENS
from pipeline.tokenizer import VocabInfo

TOY = VocabInfo.from_vocab(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(200)]
                           + [f"##c{i}" for i in range(100)])
SPEC = MaskingSpec(seed=3)


def _toy_rows(rng, rows=2000):
    """[CLS] body [SEP] rows of 8-128 tokens, ~30% "##" pieces."""
    lengths = rng.integers(8, 129, rows)
    out = [np.concatenate([[TOY.cls_id], np.where(rng.random(n - 2) < 0.3,
                                                   rng.integers(205, 305, n - 2),
                                                   rng.integers(5, 205, n - 2)), [TOY.sep_id]])
           for n in lengths]
    return (np.concatenate(out).astype(np.uint16),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def _masks(tokens, offsets, index, epoch, spec=SPEC):
    """Per instance: (positions, masked tokens there, labels) as tuples."""
    masked, pos, orig, pred = mask_instances(tokens, offsets, index, epoch, spec, TOY)
    row = np.repeat(np.arange(len(offsets) - 1), np.diff(pred))
    now = masked[offsets[row] + pos]
    return [(tuple(pos[a:b]), tuple(now[a:b]), tuple(orig[a:b]))
            for a, b in zip(pred[:-1], pred[1:])]


def test_uniforms_are_uniform_and_independent_of_the_key_and_counter_layout():
    keys = instance_keys(1, 0, np.arange(20000))
    u = uniforms(keys[:, None], np.arange(64)[None, :])
    assert u.min() >= 0 and u.max() < 1
    hist = np.histogram(u, bins=20, range=(0, 1))[0] / u.size
    assert np.abs(hist - 0.05).max() < 0.002
    # neighbouring counters and neighbouring instances are uncorrelated
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.03
    assert (uniforms(keys[5:6, None], np.arange(64)[None, :]) == u[5:6]).all()


def test_same_seed_and_epoch_give_identical_masks_other_epochs_and_seeds_others():
    tokens, offsets = _toy_rows(np.random.default_rng(0))
    index = np.arange(len(offsets) - 1) + 1000
    first = _masks(tokens, offsets, index, epoch=4)
    assert _masks(tokens, offsets, index, epoch=4) == first
    for other in (_masks(tokens, offsets, index, epoch=5),
                  _masks(tokens, offsets, index, 4, dataclasses.replace(SPEC, seed=4)),
                  _masks(tokens, offsets, index + 1, epoch=4)):
        same = sum(a[0] == b[0] for a, b in zip(first, other))
        assert same < 0.02 * len(first)   # short rows may pick the same positions by chance


def test_an_instances_masks_do_not_depend_on_the_rows_masked_with_it():
    # what makes any worker count and any resume point see the same masks
    tokens, offsets = _toy_rows(np.random.default_rng(1), rows=5000)  # > one 4096-row batch
    index = np.arange(len(offsets) - 1) + 77
    whole = _masks(tokens, offsets, index, epoch=2)
    pick = np.random.default_rng(2).permutation(len(index))[:900]
    parts = [tokens[offsets[r]:offsets[r + 1]] for r in pick]
    sub = _masks(np.concatenate(parts), np.concatenate([[0], np.cumsum([len(p) for p in parts])]),
                 index[pick], epoch=2)
    assert sub == [whole[r] for r in pick]


def test_toy_masks_follow_googles_rules():
    tokens, offsets = _toy_rows(np.random.default_rng(3), rows=4000)
    spec = dataclasses.replace(SPEC, do_whole_word_mask=True)
    masks = _masks(tokens, offsets, np.arange(4000), 0, spec)
    for r, (pos, _, labels) in enumerate(masks):
        row = tokens[offsets[r]:offsets[r + 1]]
        k = min(20, max(1, round(len(row) * 0.15)))
        assert 0 < len(pos) <= k and list(pos) == sorted(set(pos))
        assert 0 not in pos and len(row) - 1 not in pos           # never [CLS] / [SEP]
        assert (row[list(pos)] == labels).all()
        chosen = np.zeros(len(row), bool)
        chosen[list(pos)] = True
        cont = TOY.is_subword[row[1:]] & (np.arange(1, len(row)) > 1)
        assert (chosen[1:][cont] == chosen[:-1][cont]).all()      # words masked whole


# --- statistics on real Wikipedia, against Google's procedure ----------------------------

@pytest.mark.slow
def test_dynamic_masks_on_wikipedia_match_googles_statistics_in_every_epoch(wiki_corpus,
                                                                            google_wiki):
    vocab, ids, lengths, per_doc = wiki_corpus
    info = VocabInfo.from_vocab(vocab)
    cfg = PrepareConfig(dupe_factor=2, masking="dynamic")
    table = create_block_instances_flat(ids, lengths, per_doc, cfg, info, 12345, 0)
    assert table.num_rows >= 10_000
    assert table.column("masked_lm_positions").combine_chunks().values.to_numpy().size == 0
    col = table.column("input_ids").combine_chunks()
    tokens, offsets = col.values.to_numpy(), col.offsets.to_numpy().astype(np.int64)
    spec = MaskingSpec(cfg.masked_lm_prob, cfg.max_predictions_per_seq, False, 12345)
    ref_rate = google_wiki["preds"].sum() / google_wiki["num_tokens"].sum()
    previous = None
    for epoch in (0, 1):
        masked, pos, orig, pred = mask_instances(tokens, offsets, np.arange(table.num_rows),
                                                 epoch, spec, info)
        row = np.repeat(np.arange(table.num_rows), np.diff(pred))
        now = masked[offsets[row] + pos]
        # ≈ 15% predicted, rounded per instance, as Google's; 80/10/10 within 1.5 points
        rate = len(pos) / len(tokens)
        assert abs(rate - ref_rate) < 0.001 and 0.145 < rate < 0.152
        shares = {"mask": (now == info.mask_id).mean(), "kept": (now == orig).mean()}
        shares["random"] = 1 - shares["mask"] - shares["kept"]
        for name, share in shares.items():
            assert abs(share - google_wiki[name]) < 0.015
            assert abs(share - (0.8 if name == "mask" else 0.1)) < 0.015
        assert not np.isin(orig, info.special_ids).any()
        assert (tokens[offsets[row] + pos] == orig).all()
        if previous is not None:   # another epoch, other masks
            assert pos.size != previous.size or (pos != previous).mean() > 0.5
        previous = pos


# --- through prepare and the loader -------------------------------------------------------

@pytest.fixture(scope="module")
def dynamic_data(tmp_path_factory, wiki_jsonl, bert_vocab):
    """The first 400 Wikipedia sections prepared with dynamic whole-word masking, 5 shards."""
    out = tmp_path_factory.mktemp("dynamic") / "out"
    lines = wiki_jsonl.read_text().splitlines()[:400]
    src = out.parent / "wiki.jsonl"
    src.write_text("\n".join(lines) + "\n")
    prepare(PrepareConfig(input=[str(src)], output=str(out), format="jsonl",
                          vocab=str(bert_vocab), masking="dynamic", do_whole_word_mask=True,
                          num_shards=5, max_seq_length=64, bin_size=16, executor="local"))
    return out


def _loader(path, world=1, rank=0, batch=4, packing=False):
    ds = open_dataset(str(path))
    train, _ = split_holdout(ds.shards, 1)
    return PretrainLoader(ds, train, batch, rank=rank, world_size=world, seed=5, prefetch=False,
                          packing=packing)


def _by_sample(batches):
    """(sample id, input ids, MLM positions, MLM ids) of every instance of unpacked batches."""
    out = []
    for b in batches:
        for i, sid in enumerate(b.sample_ids):
            keep = b.masked_lm_ids[i] != -100
            n = int(b.attention_mask[i].sum())
            out.append((int(sid), tuple(b.input_ids[i, :n].tolist()),
                        tuple(b.masked_lm_positions[i][keep].tolist()),
                        tuple(b.masked_lm_ids[i][keep].tolist())))
    return out


def _same_batches(a, b) -> bool:
    names = ("input_ids", "token_type_ids", "masked_lm_positions", "masked_lm_ids",
             "position_ids")
    return len(a) == len(b) and all(
        (x.sample_ids == y.sample_ids).all() and all(
            (getattr(x, n) is None and getattr(y, n) is None) or
            torch.equal(getattr(x, n), getattr(y, n)) for n in names) for x, y in zip(a, b))


def test_prepare_dynamic_writes_each_instance_once_unmasked_with_word_starts(dynamic_data):
    ds = open_dataset(str(dynamic_data))
    assert ds.manifest.masking == {"mode": "dynamic", "masked_lm_prob": 0.15,
                                   "max_predictions_per_seq": 20, "do_whole_word_mask": True,
                                   "seed": 12345, "word_starts": True}
    assert ds.manifest.config["dupe_factor"] == 1 and ds.manifest.counts["masked_tokens"] == 0
    info = VocabInfo.from_vocab((dynamic_data / "vocab.txt").read_text().splitlines())
    for meta in ds.shards:
        table = pq.read_table(dynamic_data / meta.file)
        flat = table.column("input_ids").combine_chunks().values.to_numpy()
        starts = table.column("word_starts").combine_chunks().values.to_numpy()
        assert not (flat == info.mask_id).any()
        assert table.column("masked_lm_positions").combine_chunks().values.to_numpy().size == 0
        assert ((starts == 0) == (info.is_subword[flat] & ~np.isin(flat, info.special_ids))).all()
    # one copy of the corpus: no instance appears twice
    rows = [tuple(r) for m in ds.shards
            for r in pq.read_table(dynamic_data / m.file).column("input_ids").to_pylist()]
    assert len(set(rows)) == len(rows)


@pytest.mark.parametrize("packing", [False, True])
def test_loader_masks_per_epoch_and_a_resume_mid_epoch_repeats_the_run(dynamic_data, packing):
    loader = _loader(dynamic_data, packing=packing)
    per_epoch = loader.batches_per_epoch(0)
    it = loader.iterate()
    run = [next(it) for _ in range(per_epoch + per_epoch // 2)]    # 1.5 epochs
    for start in (per_epoch // 3, per_epoch + 2):                  # mid epoch 0 and epoch 1
        it = _loader(dynamic_data, packing=packing).iterate(start=start)
        resumed = [next(it) for _ in range(len(run) - start)]
        assert _same_batches(resumed, run[start:])
    if packing:
        assert all(b.packed for b in run)
        return
    # epoch 1 masks the same instances anew
    first = {s: m for s, *m in _by_sample(run[:per_epoch])}
    second = {s: m for s, *m in _by_sample(run[per_epoch:])}
    common = set(first) & set(second)
    assert len(common) > 50
    assert sum(first[s][1] != second[s][1] for s in common) > 0.9 * len(common)
    for s in common:   # the unmasked instance is the same: masked positions put back
        a, b = list(first[s][0]), list(second[s][0])
        for pos, orig in zip(first[s][1], first[s][2]):
            a[pos] = orig
        for pos, orig in zip(second[s][1], second[s][2]):
            b[pos] = orig
        assert a == b


def test_any_worker_count_sees_the_same_masks_for_an_instance(dynamic_data):
    one = _loader(dynamic_data)
    it = one.iterate()
    seen = {s: m for s, *m in _by_sample(next(it) for _ in range(one.batches_per_epoch(0)))}
    two = {}
    for rank in (0, 1):
        loader = _loader(dynamic_data, world=2, rank=rank)
        it = loader.iterate()
        two.update({s: m for s, *m in _by_sample(next(it) for _ in range(
            loader.batches_per_epoch(0)))})
    common = set(seen) & set(two)
    assert len(common) > 50 and all(seen[s] == two[s] for s in common)


def test_held_out_shards_are_masked_with_fixed_masks(dynamic_data):
    ds = open_dataset(str(dynamic_data))
    masker = masker_for(ds)
    shard = read_shard(ds, ds.shards[-1])
    a, b = masker.apply(shard, 0), masker.apply(shard, 0)
    assert (a.ids == b.ids).all() and (a.mlm_pos == b.mlm_pos).all()
    assert not (masker.apply(shard, 1).mlm_pos.size == a.mlm_pos.size
                and (masker.apply(shard, 1).mlm_pos == a.mlm_pos).all())
