"""`TrainerState`: what a checkpoint holds besides DeepSpeed's tensors, old files included."""
from __future__ import annotations

import json

from jobs.pretrain.checkpoint import TrainerState

# trainer_state.json as the previous version wrote it (a plain dict)
WRITTEN_BEFORE = {"step": 20, "micro_batches": 40, "samples": 320, "world_size": 2,
                  "micro_batch_size": 8, "seed": 42, "digests": ["a", "b"],
                  "metrics": {"train": {"loss": 5.0}, "eval": {}}, "attempts": 1}


def test_a_state_written_before_loads_and_round_trips():
    state = TrainerState.from_json(json.dumps(WRITTEN_BEFORE))
    assert (state.step, state.micro_batches, state.digests) == (20, 40, ["a", "b"])
    # fields added since read as their defaults: an old run was not packed
    assert json.loads(state.to_json()) == {**WRITTEN_BEFORE, "packing": False}


def test_a_new_state_has_one_empty_digest_per_rank():
    assert TrainerState(world_size=3, micro_batch_size=4, seed=1).digests == ["", "", ""]


def test_resuming_with_another_world_size_batch_or_seed_is_refused_with_the_fix():
    saved = TrainerState.from_json(json.dumps(WRITTEN_BEFORE))
    assert saved.mismatch(TrainerState(2, 8, 42)) is None
    problem = saved.mismatch(TrainerState(4, 8, 42))
    assert "world_size=2" in problem and "world_size=4" in problem and "--init-from" in problem
    assert saved.mismatch(TrainerState(2, 8, 7)) is not None
    assert "packing=True" in saved.mismatch(TrainerState(2, 8, 42, packing=True))
