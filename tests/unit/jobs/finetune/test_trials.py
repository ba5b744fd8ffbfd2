"""Fine-tuning in this process (`--num-workers 0`, Ray Train's local mode) on a tiny model:
a trial that fails (an OOM stand-in) does not end a search (local mode raises the loop's own
error): the others finish and the best is kept; `--eval-every` evaluates dev only every N
epochs and after the last; on Ray, as many trials at once as the cluster holds. (MLflow is left unreachable here, which costs nothing: the
integration test checks the trial's FAILED run on a real server.)"""
from __future__ import annotations

import json
import re

import pytest

from tests.helpers import job


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failing_trial_in_local_mode_leaves_the_search_to_the_others(tiny_task, capsys):
    code = job("finetune")([
        *tiny_task, "--epochs", "1", "--search", "grid",
        "--search-learning-rates", "1e-3", "3e-4", "--fail-trial-learning-rate", "3e-4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    (failed,) = [t for t in summary["trials"] if "error" in t]
    assert failed["learning_rate"] == 3e-4 and "OutOfMemoryError" in failed["error"]
    assert summary["best_trial"]["learning_rate"] == 1e-3 and summary["best_trial"]["dev_accuracy"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_eval_every_evaluates_dev_every_n_epochs_and_after_the_last(tiny_task, capfd):
    assert job("finetune")([*tiny_task, "--epochs", "5", "--eval-every", "2"]) == 0
    captured = capfd.readouterr()
    # progress is the job's own lines: Ray Train's INFO lines stay off the console
    assert "Reported metrics" not in captured.err and "Running in local mode" not in captured.err
    evaluated = [int(e) for e in re.findall(r"epoch (\d+) dev accuracy", captured.out)]
    assert evaluated == [2, 4, 5]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["best_trial"]["best_epoch"] in evaluated


@pytest.mark.parametrize("workers,cpus,gpu,cluster,expected", [
    (1, 1.0, False, {"CPU": 2.0}, 2),                  # the demo: 2 of its 6 fits at a time
    (2, 1.0, False, {"CPU": 5.0}, 2),
    (1, 0.5, False, {"CPU": 2.0}, 4),
    (2, 1.0, True, {"CPU": 64.0, "GPU": 4.0}, 2),      # GPUs are the limit
    (4, 1.0, False, {"CPU": 2.0}, 1),                  # bigger than the cluster: one waits
    (1, 0.0, False, {"CPU": 2.0}, None),               # needs nothing: no limit
])
def test_trials_at_once_are_what_the_cluster_holds(workers, cpus, gpu, cluster, expected):
    from jobs.finetune.trials import TrialJob, fitting_trials
    job = TrialJob(name="t", trial={}, run_id=None, loop_config={}, num_workers=workers,
                   cpus_per_worker=cpus, use_gpu=gpu, storage_path="out")
    assert fitting_trials(job, cluster) == expected

