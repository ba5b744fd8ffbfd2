"""FinetuneConfig, presets, the search grid, the per-rank data split and schedule, the task
spec a model carries, and the one-line errors of `bertpipe finetune/evaluate/embed`."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jobs.config import ConfigError, load_preset, presets
from jobs.finetune.config import FinetuneConfig, trial_name
from jobs.finetune.loop import epoch_order, schedule_steps
from jobs.finetune.tasks import TaskSpec

READY = dict(model="m", train="t.jsonl", validation="d.jsonl")


@pytest.mark.parametrize("name", sorted(presets("finetune")))
def test_every_shipped_finetune_preset_parses_and_validates(name):
    cfg = dataclasses.replace(load_preset(FinetuneConfig, "finetune", name), **READY).validate()
    assert cfg.trials()


def test_the_paper_search_is_its_18_trial_grid():
    trials = FinetuneConfig(search="paper", **READY).trials()
    assert len(trials) == 18
    assert {t["learning_rate"] for t in trials} == {5e-5, 3e-5, 2e-5}
    assert {t["batch_size"] for t in trials} == {16, 32}
    assert {t["epochs"] for t in trials} == {2, 3, 4}


def test_a_smaller_grid_takes_the_given_lists_and_single_values_for_the_rest():
    cfg = FinetuneConfig(search="grid", search_learning_rates=[1e-4, 5e-5], epochs=1,
                         batch_size=8, **READY)
    assert cfg.trials() == [{"learning_rate": 1e-4, "batch_size": 8, "epochs": 1},
                            {"learning_rate": 5e-5, "batch_size": 8, "epochs": 1}]
    paper_lrs = FinetuneConfig(search="paper", search_epochs=[2], **READY).trials()
    assert len(paper_lrs) == 6
    assert trial_name("ft", cfg.trials()[1]) == "ft-lr5e-05-bs8-ep1"


def test_search_lists_without_search_are_refused():
    with pytest.raises(ConfigError, match="--search grid"):
        FinetuneConfig(search_epochs=[2], **READY).validate()


def test_a_batch_the_workers_cannot_share_is_refused():
    with pytest.raises(ConfigError, match="batch_size 30 is not a multiple of num_workers 4"):
        FinetuneConfig(batch_size=30, num_workers=4, **READY).validate()


def test_missing_inputs_are_named():
    with pytest.raises(ConfigError, match="no train given"):
        FinetuneConfig(model="m", validation="d").validate()


def test_default_metric_follows_the_task():
    assert FinetuneConfig().default_metric(False) == "accuracy"
    assert FinetuneConfig().default_metric(True) == "pearson"
    assert FinetuneConfig(task="question-answering").default_metric(False) == "f1"
    assert FinetuneConfig(task="token-classification", metric="accuracy").default_metric(False) \
        == "accuracy"


def test_each_rank_gets_an_equal_disjoint_share_each_epoch():
    shares = [epoch_order(10, seed=1, epoch=1, rank=r, world=3) for r in range(3)]
    assert all(len(s) == 3 for s in shares)
    assert len(set(np.concatenate(shares).tolist())) == 9
    assert not np.array_equal(epoch_order(10, 1, 1, 0, 1), epoch_order(10, 1, 2, 0, 1))
    assert np.array_equal(epoch_order(10, 1, 2, 0, 1), epoch_order(10, 1, 2, 0, 1))


def test_schedule_counts_steps_of_the_global_batch_and_ten_percent_warmup():
    # 100 features, batch 8 on 2 ranks: 50 each, micro 4 -> 13 steps/epoch (last one short)
    assert schedule_steps(100, 8, 2, epochs=3) == (13, 39)
    assert FinetuneConfig(**READY).warmup(39) == 4  # the default 0.1 of the steps, rounded up


def test_warmup_is_steps_or_a_fraction_and_the_old_key_still_works(capsys):
    from jobs.config import from_dict
    assert FinetuneConfig(warmup_steps=10, **READY).warmup(39) == 10
    assert FinetuneConfig(warmup_steps=100, **READY).warmup(39) == 39
    cfg = from_dict(FinetuneConfig, {"warmup_ratio": 0.2, "grad_clip": 0.5, **READY})
    assert (cfg.warmup_steps, cfg.max_grad_norm) == (0.2, 0.5)
    assert "'warmup_ratio' is deprecated, use 'warmup_steps'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="warmup_steps"):
        FinetuneConfig(warmup_steps=2.5, **READY).validate()


def test_a_task_spec_round_trips_through_the_model_folder(tmp_path):
    spec = TaskSpec(task="question-answering", version_2_with_negative=True,
                    null_threshold=-1.5, metric="f1")
    spec.save(tmp_path)
    assert TaskSpec.load(tmp_path) == spec
    assert TaskSpec.load(tmp_path / "elsewhere") is None


def test_cli_errors_are_one_line_with_exit_code_2(capsys, tmp_path):
    from tests.helpers import job
    embed, evaluate, finetune = job("embed"), job("evaluate"), job("finetune")
    assert finetune(["--train", "t.jsonl", "--validation", "d.jsonl"]) == 2
    assert "no model given" in capsys.readouterr().err
    assert finetune(["--model", str(tmp_path), "--train", "t", "--validation", "d"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertpipe: error: --model") and "\n" not in err
    assert evaluate(["--model", str(tmp_path)]) == 2
    assert "no input given" in capsys.readouterr().err
    assert embed(["--model", "m", "--input", "x"]) == 2
    assert "no output given" in capsys.readouterr().err


def test_help_lists_the_issue_interface():
    from jobs.cli import build_parser
    text = build_parser("finetune").format_help()
    for flag in ("--task", "--model", "--train", "--validation", "--text-column",
                 "--text-pair-column", "--label-column", "--epochs", "--learning-rate",
                 "--batch-size", "--num-workers", "--search", "--tracking-uri"):
        assert flag in text


def test_the_best_epoch_or_trial_maximizes_scores_and_minimizes_errors():
    from jobs.finetune.predict import goodness
    assert goodness("accuracy", 0.9) > goodness("accuracy", 0.8)
    assert goodness("mse", 0.1) > goodness("mse", 0.2)
