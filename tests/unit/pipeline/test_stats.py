"""The unigram MLM baseline against an independent count, context_gain, the plateau warning."""
from __future__ import annotations

import collections
import math

import pyarrow.parquet as pq
import pytest

from pipeline.dataset import open_dataset, split_holdout
from pipeline.schema import SPECIAL_TOKENS
from pipeline.stats import (
    PLATEAU_GAIN,
    PLATEAU_RATIO,
    Unigram,
    diagnostics,
    plateau_warning,
    unigram_baseline,
)
from tests.helpers import write_dataset


def _rows(ds, shards):
    for meta in shards:
        yield from pq.read_table(f"{ds.path}/{meta.file}").to_pylist()


def _entropy_top1(counter: collections.Counter) -> tuple[float, float]:
    total = sum(counter.values())
    return (-sum(n / total * math.log(n / total) for n in counter.values()),
            max(counter.values()) / total)


@pytest.fixture
def ds(tmp_path):
    return open_dataset(write_dataset(tmp_path / "data", num_shards=4, rows_per_shard=50))


def test_unigram_loss_and_top1_equal_an_independent_count_of_the_masked_tokens(ds):
    train, held_out = split_holdout(ds.shards, 1)
    got = unigram_baseline(ds, train)
    counts = collections.Counter(t for r in _rows(ds, train) for t in r["masked_lm_ids"])
    loss, top1 = _entropy_top1(counts)
    assert got.source == "masked" and got.shards == 3
    assert got.tokens == sum(counts.values())
    assert got.loss == pytest.approx(loss, rel=1e-12)
    assert got.top1 == pytest.approx(top1, rel=1e-12)
    top = counts.most_common(1)[0][0]
    assert got.top_token == (SPECIAL_TOKENS[top] if top < len(SPECIAL_TOKENS) else f"t{top}")
    # the held-out shard is not counted: its tokens change the numbers
    everything = unigram_baseline(ds, ds.shards)
    assert everything.tokens > got.tokens and everything.loss != got.loss


def test_the_copy_baseline_is_the_conditional_entropy_of_target_given_the_input_token(ds):
    got = unigram_baseline(ds, ds.shards)
    pairs = collections.Counter()
    for r in _rows(ds, ds.shards):
        for p, t in zip(r["masked_lm_positions"], r["masked_lm_ids"]):
            pairs[(r["input_ids"][p], t)] += 1
    total = sum(pairs.values())
    given = collections.Counter()
    for (x, _), n in pairs.items():
        given[x] += n
    loss = -sum(n / total * math.log(n / given[x]) for (x, _), n in pairs.items())
    best = collections.Counter()
    for (x, _), n in pairs.items():
        best[x] = max(best[x], n)
    assert got.copy_loss == pytest.approx(loss, rel=1e-12)
    assert got.copy_top1 == pytest.approx(sum(best.values()) / total, rel=1e-12)
    # every position of the helper's data shows [MASK]: copying cannot beat the unigram
    assert got.copy_loss == pytest.approx(got.loss) and got.copy_top1 == pytest.approx(got.top1)


def test_dynamic_masking_counts_the_non_special_tokens_with_the_masks_undone(ds):
    got = unigram_baseline(ds, ds.shards, dynamic=True)
    counts = collections.Counter()
    for r in _rows(ds, ds.shards):
        ids = list(r["input_ids"])
        for p, t in zip(r["masked_lm_positions"], r["masked_lm_ids"]):
            ids[p] = t
        counts.update(t for t in ids if t >= 5)  # ids 0-4 are the special tokens
    loss, top1 = _entropy_top1(counts)
    assert got.source == "tokens" and got.copy_loss is None
    assert got.tokens == sum(counts.values())
    assert got.loss == pytest.approx(loss, rel=1e-12) and got.top1 == pytest.approx(top1)


def test_reading_stops_after_the_shard_that_reaches_max_tokens(ds):
    got = unigram_baseline(ds, ds.shards, max_tokens=1)
    first = sum(len(r["masked_lm_ids"]) for r in _rows(ds, ds.shards[:1]))
    assert got.shards == 1 and got.tokens == first


UNIGRAM = Unigram(loss=6.92, top1=0.054, top_token="the", tokens=1000, shards=1,
                  source="masked")


def test_context_gain_is_unigram_loss_minus_model_loss_for_train_and_eval():
    d = diagnostics(UNIGRAM, {"mlm_loss": 6.0, "mlm_accuracy": 0.108, "eval_mlm_loss": 6.5,
                              "eval_mlm_accuracy": 0.081})
    assert d["context_gain"] == pytest.approx(0.92)
    assert d["eval_context_gain"] == pytest.approx(0.42)
    assert d["mlm_accuracy_over_unigram"] == pytest.approx(2.0)
    assert d["eval_mlm_accuracy_over_unigram"] == pytest.approx(1.5)
    assert diagnostics(UNIGRAM, {"mlm_loss": 7.0}) == {"context_gain": pytest.approx(-0.08)}


def test_the_plateau_warning_fires_on_either_threshold_and_prefers_held_out_metrics():
    # the demo: 6.78 nats and 0.073 accuracy: gain 0.14 but only 1.35x the top-1
    demo = plateau_warning(UNIGRAM, {"eval_mlm_loss": 6.78, "eval_mlm_accuracy": 0.073})
    assert demo and "near the unigram plateau" in demo and "held-out" in demo and "1.35x" in demo
    low_gain = {"eval_mlm_loss": 6.92 - PLATEAU_GAIN / 2, "eval_mlm_accuracy": 0.2}
    assert plateau_warning(UNIGRAM, low_gain)
    learned = {"eval_mlm_loss": 6.92 - 2 * PLATEAU_GAIN,
               "eval_mlm_accuracy": 0.054 * PLATEAU_RATIO * 1.01}
    assert plateau_warning(UNIGRAM, learned) is None
    # held-out metrics decide over a good-looking training window
    assert plateau_warning(UNIGRAM, {**demo_metrics(), "mlm_loss": 5.0, "mlm_accuracy": 0.3})
    assert "training" in plateau_warning(UNIGRAM, {"mlm_loss": 6.9, "mlm_accuracy": 0.06})
    assert plateau_warning(UNIGRAM, {}) is None


def demo_metrics() -> dict:
    return {"eval_mlm_loss": 6.78, "eval_mlm_accuracy": 0.073}
