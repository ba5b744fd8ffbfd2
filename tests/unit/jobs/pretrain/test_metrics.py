"""Training metrics from model outputs: accuracies from counts, throughput, MFU."""
import numpy as np
import pytest
import torch

from jobs.pretrain.metrics import Window, sample_digest
from model import BertConfig
from model.outputs import BertForPreTrainingOutput
from pipeline.batch import IGNORE_INDEX, Batch


def batch(predictions_per_row: list[int], width=8) -> Batch:
    B, P = len(predictions_per_row), max(predictions_per_row)
    ids = torch.full((B, P), IGNORE_INDEX)
    for i, k in enumerate(predictions_per_row):
        ids[i, :k] = 7
    ones = torch.ones(B, width, dtype=torch.long)
    return Batch(ones, ones, ones, torch.zeros(B, P, dtype=torch.long), ids,
                 torch.zeros(B, dtype=torch.long), np.arange(B), num_tokens=B * width)


def output(loss, mlm_acc, nsp_acc):
    t = torch.tensor
    return BertForPreTrainingOutput(loss=t(loss), mlm_loss=t(loss - 0.5), nsp_loss=t(0.5),
                                    mlm_accuracy=t(mlm_acc), nsp_accuracy=t(nsp_acc))


def test_accuracies_weigh_each_prediction_not_each_batch():
    w = Window(torch.device("cpu"), BertConfig.from_preset("bert-tiny", vocab_size=100))
    w.add(output(4.0, 1.0, 0.5), batch([1, 1]))          # 2 predictions, all right
    w.add(output(2.0, 0.25, 1.0), batch([4, 4, 0, 0]))   # 8 predictions, 2 right
    m = w.reduce(world_size=1, peak=None)
    assert m["loss"] == pytest.approx(3.0)                # mean over micro-batches
    assert m["mlm_accuracy"] == pytest.approx(4 / 10)
    assert m["nsp_accuracy"] == pytest.approx((1 + 4) / 6)
    assert m["samples_per_s"] > 0 and m["tokens_per_s"] == pytest.approx(m["samples_per_s"] * 8)
    assert "mfu" not in m
    assert w.reduce(1, None, prefix="eval_")["eval_loss"] == 0.0   # reduce starts a new window


def test_mfu_is_reported_against_a_known_peak():
    w = Window(torch.device("cpu"), BertConfig.from_preset("bert-tiny", vocab_size=100))
    w.add(output(4.0, 1.0, 0.5), batch([2, 2]))
    m = w.reduce(world_size=2, peak=1e12)
    assert 0 < m["mfu"] < 1


def test_the_sample_digest_depends_on_order():
    a, b = np.array([1, 2]), np.array([3, 4])
    assert sample_digest(sample_digest("", a), b) != sample_digest(sample_digest("", b), a)
    assert sample_digest(sample_digest("", a), b) == sample_digest(sample_digest("", a), b)


def test_packed_and_unpacked_batches_of_the_same_instances_count_the_same(tmp_path):
    """Counts and model FLOPs come from the instances, not the rows they are laid out in;
    padding is reported as trained and as one instance per row."""
    from pipeline.batch import collate, collate_packed
    from pipeline.dataset import open_dataset, read_shard
    from tests.helpers import write_dataset
    ds = open_dataset(str(write_dataset(tmp_path / "d", max_len=64)))
    shard = read_shard(ds, ds.shards[0])
    rows = np.arange(0, 60, 3)
    cfg = BertConfig.from_preset("bert-tiny", vocab_size=1000)
    found = {}
    for name, b in (("plain", collate(shard, rows)), ("packed", collate_packed(shard, rows, 64))):
        w = Window(torch.device("cpu"), cfg)
        w.add(output(4.0, 0.5, 0.5), b)
        found[name] = (dict(w.counts), w.reduce(1, 1e12))
    (plain, mp), (packed, mk) = found["plain"], found["packed"]
    for k in ("mlm_count", "nsp_count", "samples", "tokens", "flops", "unpacked_slots"):
        assert packed[k] == plain[k], k
    assert plain["samples"] == 20 and plain["nsp_count"] == 20
    assert packed["slots"] < plain["slots"]
    assert mk["padding_fraction"] < mp["padding_fraction"] == pytest.approx(
        mp["padding_fraction_unpacked"])
    assert mk["padding_fraction_unpacked"] == pytest.approx(mp["padding_fraction_unpacked"])
    assert mk["nsp_accuracy"] == mp["nsp_accuracy"] == 0.5
