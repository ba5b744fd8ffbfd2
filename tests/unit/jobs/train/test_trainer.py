"""`torch_trainer` drops only Ray Train helpers that a fit does not use, by their real names,
and keeps the workers' Ray Train INFO lines off the console."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from jobs.train import runtime
from jobs.train.trainer import (
    CLEANER_HELPER,
    DATASETS_HELPER,
    WORKER_CHATTER,
    quiet_reports,
    torch_trainer,
)


def noop(config):
    return None


def names(trainer) -> set[str]:
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


def scaling():
    import ray.train
    return ray.train.ScalingConfig(num_workers=2)


def test_ray_trains_default_helpers_still_have_the_names_we_drop():
    from ray.train.torch import TorchTrainer
    assert {DATASETS_HELPER, CLEANER_HELPER} <= names(TorchTrainer(noop,
                                                                   scaling_config=scaling()))


@pytest.mark.parametrize("own", [True, False])
def test_no_dataset_helper_without_datasets_and_no_cleaner_only_on_our_own_ray(own, monkeypatch):
    monkeypatch.setattr(runtime, "own_local_ray", lambda: own)
    kept = names(torch_trainer(noop, scaling_config=scaling()))
    assert DATASETS_HELPER not in kept
    assert (CLEANER_HELPER in kept) is not own
    assert "BackendSetupCallback" in kept          # everything else stays


def test_a_fit_with_datasets_keeps_the_dataset_helper(monkeypatch):
    monkeypatch.setattr(runtime, "own_local_ray", lambda: True)
    kept = names(torch_trainer(noop, scaling_config=scaling(), datasets={"train": list}))
    assert DATASETS_HELPER in kept and CLEANER_HELPER not in kept


@pytest.mark.parametrize("node,own", [(None, False), (SimpleNamespace(head=False), False),
                                      (SimpleNamespace(head=True), True)])
def test_our_own_ray_is_the_head_node_this_process_started(node, own, monkeypatch):
    from ray._private import worker
    monkeypatch.setattr(worker, "_global_node", node)   # ray.init sets it: head=True if started
    assert runtime.own_local_ray() is own


def test_in_this_process_ray_train_logs_warnings_only():
    torch_trainer(noop, scaling_config=scaling())
    assert logging.getLogger("ray.train").getEffectiveLevel() == logging.WARNING  # local mode
    local = logging.getLogger("ray.train.v2._internal.execution.train_fn_utils")
    assert not local.isEnabledFor(logging.INFO) and local.isEnabledFor(logging.WARNING)


def test_the_workers_per_checkpoint_lines_are_quieted_by_their_real_loggers():
    import importlib
    quiet_reports()
    lines = {"ray.train.v2._internal.execution.context": "Reporting training result",
             "ray.train.v2._internal.execution.storage": "Checkpoint successfully created"}
    assert set(lines) == set(WORKER_CHATTER)
    for name, line in lines.items():
        module = importlib.import_module(name)
        source = Path(module.__file__).read_text()
        assert line in source                        # the line is still logged there ...
        named = "__file__" if "logging.getLogger(__file__)" in source else "__name__"
        assert f"logging.getLogger({named})" in source
        logger = logging.getLogger(module.__file__ if named == "__file__" else name)
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
