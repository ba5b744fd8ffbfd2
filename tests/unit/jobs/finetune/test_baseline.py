"""The from-scratch baseline and seeds: what a scratch fit starts from, how fits are named,
how each side picks its setting, and the mean, std and seed-paired gain they report."""
from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

import model.hf
from jobs.cli import build_parser
from jobs.config import ConfigError, resolve
from jobs.finetune.compare import aggregate, mean_std, paired_gain, pick
from jobs.finetune.config import FinetuneConfig, fit_name
from jobs.finetune.loop import initial_model
from jobs.finetune.tasks import TaskSpec
from model import BertConfig, BertForPreTraining, BertModel

READY = dict(model="m", train="t.jsonl", validation="d.jsonl")
SPEC = TaskSpec(task="classification", labels=["a", "b", "c"], metric="accuracy")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 'pretrained' bert-tiny HF folder whose weights are not BERT's init (seed 123, then
    shifted), with a vocab."""
    folder = tmp_path_factory.mktemp("pretrained")
    cfg = BertConfig.from_preset("bert-tiny", vocab_size=64)
    torch.manual_seed(123)
    net = BertForPreTraining(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(59))]
    model.hf.save(net, folder, vocab=vocab, do_lower_case=True)
    return folder, cfg


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_scratch_fit_starts_from_a_freshly_seeded_bert_not_the_pretrained_weights(pretrained):
    folder, cfg = pretrained
    scratch = initial_model(SPEC, folder, {"seed": 7, "init": "scratch"}, default_seed=42)
    torch.manual_seed(7)
    fresh = BertModel(BertConfig(**{**cfg.to_dict(), "num_labels": 3}))
    got, want = _state(scratch.bert), _state(fresh)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the pretrained side of the same seed: the folder's encoder, the very same new head
    tuned = initial_model(SPEC, folder, {"seed": 7, "init": "pretrained"}, default_seed=42)
    weights = model.hf.read_weights(folder)
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(tuned.state_dict()[word], weights[word])
    assert not torch.equal(scratch.state_dict()[word], weights[word])
    assert torch.equal(tuned.classifier.weight, scratch.classifier.weight)
    assert scratch.config.hidden_size == cfg.hidden_size and scratch.num_labels == 3
    # another seed draws other weights; no seed in the trial falls back to the config's
    other = initial_model(SPEC, folder, {"seed": 8, "init": "scratch"}, default_seed=42)
    assert not torch.equal(other.state_dict()[word], scratch.state_dict()[word])
    default = initial_model(SPEC, folder, {"init": "scratch"}, default_seed=7)
    assert torch.equal(default.state_dict()[word], scratch.state_dict()[word])


def test_seeds_and_baseline_options_parse_validate_and_name_each_fit():
    args = build_parser("finetune").parse_args(["--baseline", "scratch", "--seeds", "3",
                                                "--seed", "5", *sum(([f"--{k}", v] for k, v
                                                                     in READY.items()), [])])
    cfg = resolve(FinetuneConfig, args, command="finetune").validate()
    assert cfg.seed_list() == [5, 6, 7] and cfg.sides() == ["pretrained", "scratch"]
    assert FinetuneConfig(**READY).sides() == ["pretrained"]
    with pytest.raises(ConfigError, match="seeds must be at least 1"):
        FinetuneConfig(seeds=0, **READY).validate()
    trial = {"learning_rate": 1e-3, "batch_size": 32, "epochs": 4, "seed": 6, "init": "scratch"}
    assert fit_name("ft-scratch", trial, search=True, seeds=3) == "ft-scratch-lr0.001-bs32-ep4-seed6"
    assert fit_name("ft", trial, search=False, seeds=3) == "ft-seed6"
    assert fit_name("ft", trial, search=False, seeds=1) == "ft"


def _outcome(side: str, lr: float, seed: int, value: float | None, metric="accuracy") -> dict:
    trial = {"learning_rate": lr, "batch_size": 32, "epochs": 2, "seed": seed, "init": side}
    if value is None:
        return {"name": f"{side}-{lr}-{seed}", "trial": trial, "run_id": None, "error": "boom"}
    return {"name": f"{side}-{lr}-{seed}", "trial": trial, "run_id": f"r-{side}-{lr}-{seed}",
            "result": {"best": {metric: value, "macro_f1": value / 2}}, "checkpoint": None}


GRID = {  # side -> lr -> dev accuracy of seeds 1, 2, 3
    "pretrained": {1e-3: [0.70, 0.60, 0.65], 3e-3: [0.80, 0.40, 0.50]},
    "scratch": {1e-3: [0.30, 0.35, 0.40], 3e-3: [0.50, 0.45, 0.40]},
}


def _grid_outcomes(metric="accuracy") -> list[dict]:
    return [_outcome(side, lr, seed, v, metric) for side, by_lr in GRID.items()
            for lr, values in by_lr.items() for seed, v in zip((1, 2, 3), values)]


def test_each_side_picks_its_own_rate_by_the_mean_over_seeds_not_the_best_single_fit():
    outcomes = _grid_outcomes()
    pre, scr = pick(outcomes, "accuracy", "pretrained"), pick(outcomes, "accuracy", "scratch")
    # pretrained: 3e-3 has the best single fit (0.80) but 1e-3 the best mean (0.65 > 0.567)
    assert pre.setting == {"learning_rate": 1e-3, "batch_size": 32, "epochs": 2}
    assert pre.values == {1: 0.70, 2: 0.60, 3: 0.65}
    assert pre.best["trial"]["seed"] == 1
    # scratch gets its own best rate, 3e-3 (mean 0.45 > 0.35)
    assert scr.setting["learning_rate"] == 3e-3 and scr.values == {1: 0.50, 2: 0.45, 3: 0.40}
    summary = pre.summary()
    assert summary["mean"] == pytest.approx(np.mean([0.70, 0.60, 0.65]))
    assert summary["std"] == pytest.approx(statistics.stdev([0.70, 0.60, 0.65]))


def test_the_gain_over_scratch_pairs_seeds_and_reports_their_mean_and_std():
    outcomes = _grid_outcomes()
    pre, scr = pick(outcomes, "accuracy", "pretrained"), pick(outcomes, "accuracy", "scratch")
    gain = paired_gain(pre.values, scr.values, "accuracy")
    diffs = [0.70 - 0.50, 0.60 - 0.45, 0.65 - 0.40]
    assert gain["values"] == pytest.approx({1: diffs[0], 2: diffs[1], 3: diffs[2]})
    assert gain["mean"] == pytest.approx(np.mean(diffs))
    assert gain["std"] == pytest.approx(statistics.stdev(diffs))
    # only shared seeds are paired; lower-is-better metrics count a lower value as a gain
    assert paired_gain({1: 0.5, 2: 0.7}, {2: 0.6, 3: 0.1}, "accuracy")["values"] == \
        pytest.approx({2: 0.1})
    assert paired_gain({1: 0.2}, {1: 0.5}, "mse")["mean"] == pytest.approx(0.3)
    assert paired_gain({1: 0.2}, {2: 0.5}, "accuracy") is None


def test_failed_fits_are_left_out_and_a_side_without_any_is_none():
    outcomes = _grid_outcomes()
    outcomes[0] = _outcome("pretrained", 1e-3, 1, None)  # seed 1 of the best setting failed
    pre = pick(outcomes, "accuracy", "pretrained")
    assert pre.setting["learning_rate"] == 1e-3 and sorted(pre.values) == [2, 3]
    assert pick([o for o in outcomes if o["trial"]["init"] == "pretrained"], "accuracy",
                "scratch") is None
    # a run without seeds or sides (no baseline, one seed) is the pretrained side
    plain = {"name": "ft", "trial": {"learning_rate": 1e-3, "batch_size": 32, "epochs": 2},
             "run_id": "r", "result": {"best": {"accuracy": 0.5}}}
    assert pick([plain], "accuracy").values == {0: 0.5}


def test_mean_std_and_aggregate_match_numpy_with_the_sample_std():
    assert mean_std([0.5]) == (0.5, 0.0)
    values = [0.61, 0.58, 0.66, 0.70]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    agg = aggregate({1: {"accuracy": 0.6, "macro_f1": 0.4, "note": "x"},
                     2: {"accuracy": 0.8, "macro_f1": 0.5, "note": "y"}})
    assert agg == pytest.approx({"accuracy_mean": 0.7, "accuracy_std": np.std([0.6, 0.8], ddof=1),
                                 "macro_f1_mean": 0.45,
                                 "macro_f1_std": np.std([0.4, 0.5], ddof=1)})
    with pytest.raises(ValueError):
        mean_std([])
