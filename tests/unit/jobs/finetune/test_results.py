"""What a workflow reports: which models its evaluate stage scores, both sides' test metrics
over seeds with the paired gain, and the headline metrics of its parent run."""
from __future__ import annotations

import statistics

import pytest

from jobs.finetune.results import combine, evaluation_models, headline
from jobs.workflow import describe

FINETUNE = {  # the parts of a `bertpipe finetune --baseline scratch --seeds 2` summary used
    "stage": "finetune-0-classification", "task": "classification", "metric": "accuracy",
    "metrics": {"dev_accuracy": 0.7, "dev_accuracy_mean": 0.65, "dev_accuracy_std": 0.07,
                "scratch_dev_accuracy": 0.5, "scratch_dev_accuracy_std": 0.1,
                "gain_over_scratch": 0.15, "gain_over_scratch_std": 0.03},
    "models": [{"seed": 42, "model_uri": "models:/m-a", "checkpoint": "/c/a"},
               {"seed": 43, "model_uri": None, "checkpoint": "/c/b"}],
    "scratch": {"models": [{"seed": 42, "model_uri": "models:/m-c", "checkpoint": "/c/c"},
                           {"seed": 43, "model_uri": "models:/m-d", "checkpoint": "/c/d"}]},
}


def test_the_evaluate_stage_scores_every_seeds_model_of_both_sides():
    assert evaluation_models(FINETUNE) == [
        ("pretrained", 42, "models:/m-a"), ("pretrained", 43, "/c/b"),  # unlogged: checkpoint
        ("scratch", 42, "models:/m-c"), ("scratch", 43, "models:/m-d")]
    assert evaluation_models({"metrics": {}}) == [] and evaluation_models(None) == []


def _evaluated(values: dict[int, float]) -> dict[int, dict]:
    return {seed: {"run_id": f"r{seed}", "model": "m",
                   "metrics": {"accuracy": v, "macro_f1": v / 2}} for seed, v in values.items()}


def test_both_sides_test_metrics_are_averaged_and_the_gain_is_paired_by_seed():
    out = combine({"pretrained": _evaluated({42: 0.62, 43: 0.70, 44: 0.66}),
                   "scratch": _evaluated({42: 0.50, 43: 0.52, 44: 0.60})}, "accuracy")
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(statistics.mean([0.62, 0.70, 0.66]))
    assert m["accuracy_std"] == pytest.approx(statistics.stdev([0.62, 0.70, 0.66]))
    assert m["macro_f1"] == pytest.approx(statistics.mean([0.31, 0.35, 0.33]))
    assert m["scratch_accuracy"] == pytest.approx(statistics.mean([0.50, 0.52, 0.60]))
    gains = [0.12, 0.18, 0.06]
    assert m["gain_over_scratch"] == pytest.approx(statistics.mean(gains))
    assert m["gain_over_scratch_std"] == pytest.approx(statistics.stdev(gains))
    assert out["gains"] == pytest.approx({"42": 0.12, "43": 0.18, "44": 0.06})
    assert out["seeds"] == [42, 43, 44] and len(out["runs"]) == 6
    text = describe(m, "accuracy", 3)
    assert text.startswith("pretrained 0.6600 ± 0.0400 (n=3), scratch 0.5400 ± ")
    assert "gain over scratch 0.1200 ± 0.0600 (n=3)" in text
    # seeds without a baseline: means and stds only
    alone = combine({"pretrained": _evaluated({1: 0.5, 2: 0.7})}, "accuracy")["metrics"]
    assert set(alone) == {"accuracy", "accuracy_std", "macro_f1", "macro_f1_std"}


def test_the_headline_has_pretraining_finetuning_evaluation_and_probe_numbers():
    stages = [
        {"stage": "prepare", "counts": {"instances": 10}},
        {"stage": "pretrain-phase1", "metrics": {"eval_mlm_accuracy": 0.07, "mlm_loss": 6.8,
                                                 "eval_context_gain": 0.1, "samples_per_s": 80},
         "unigram": {"loss": 6.9, "top1": 0.054}},
        {"stage": "pretrain-phase2", "metrics": {"eval_mlm_accuracy": 0.2,
                                                 "eval_context_gain": 1.1},
         "unigram": {"loss": 6.9, "top1": 0.054}},
        FINETUNE,
        {"stage": "evaluate-0", "task": "classification", "metric": "accuracy",
         "metrics": {"accuracy": 0.66, "accuracy_std": 0.04, "scratch_accuracy": 0.54,
                     "gain_over_scratch": 0.12, "gain_over_scratch_std": 0.06}},
        {"stage": "probe-0", "metrics": {"pretrained_test_accuracy": 0.55,
                                         "test_gain_over_scratch": 0.08,
                                         "pretrained_dev_accuracy": 0.5}},
    ]
    got = headline(stages)
    assert got == pytest.approx({
        "pretrain_eval_mlm_accuracy": 0.2, "pretrain_eval_context_gain": 1.1,  # phase 2 wins
        "pretrain_mlm_loss": 6.8, "pretrain_unigram_mlm_accuracy": 0.054,
        "pretrain_unigram_mlm_loss": 6.9,
        "finetune_classification_dev_accuracy": 0.65,  # the mean over seeds
        "finetune_classification_dev_accuracy_std": 0.07,
        "finetune_classification_dev_scratch_accuracy": 0.5,
        "finetune_classification_dev_scratch_accuracy_std": 0.1,
        "finetune_classification_dev_gain_over_scratch": 0.15,
        "finetune_classification_dev_gain_over_scratch_std": 0.03,
        "evaluate_classification_accuracy": 0.66, "evaluate_classification_accuracy_std": 0.04,
        "evaluate_classification_scratch_accuracy": 0.54,
        "evaluate_classification_gain_over_scratch": 0.12,
        "evaluate_classification_gain_over_scratch_std": 0.06,
        "probe_test_accuracy": 0.55, "probe_dev_accuracy": 0.5,
        "probe_test_gain_over_scratch": 0.08})
    # a plain fine-tune (one seed, no baseline) still has its dev metric
    plain = {"stage": "finetune-0-classification", "task": "classification",
             "metric": "accuracy", "metrics": {"dev_accuracy": 0.6}}
    assert headline([plain]) == {"finetune_classification_dev_accuracy": 0.6}
