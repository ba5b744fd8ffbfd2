"""A failed run's message names the error that explains the others and says whether
rerunning can help: never "rerun to resume" for bad input, free space first for a full disk."""
from __future__ import annotations

import errno

import pytest

from jobs.train.failures import Cause, advice, disk_full, root_cause
from pipeline.errors import InputError

ray_train = pytest.importorskip("ray.train")


def group_error(**by_rank):
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    wrapped = {int(k[1:]): e if isinstance(e, RayActorError)   # a dead worker, as Ray sees it
               else UserExceptionWithTraceback(e, f"Traceback ...\n{e}")  # what a rank raised
               for k, e in by_rank.items()}
    return ray_train.WorkerGroupError("2 workers failed", wrapped)


def test_a_data_error_on_one_rank_wins_over_the_collateral_errors_of_the_others():
    e = group_error(r0=RuntimeError("[gloo] Connection closed by peer"),
                    r1=InputError("shard s3://b/shard-00003.parquet: not a readable shard"))
    cause = root_cause(e)
    assert cause == Cause("user", "shard s3://b/shard-00003.parquet: not a readable shard")
    assert advice(cause, 20, "/ckpt") == "fix that first: resuming as it is cannot help"


def test_a_full_disk_says_free_space_then_rerun_to_resume():
    full = OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    e = group_error(r0=full, r1=RuntimeError("[gloo] Connection reset"))
    cause = root_cause(e)
    assert cause.kind == "disk_full" and "No space left on device" in cause.line
    assert advice(cause, 10, "/ckpt") == ("free space on /ckpt (or lower --keep-checkpoints), "
                                          "then rerun the same command to resume from its last "
                                          "checkpoint (step 10)")
    assert disk_full(OSError(errno.ENOSPC, "x")) and disk_full(OSError(errno.EDQUOT, "x"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_dead_worker_is_rerun_from_the_last_checkpoint_or_from_the_start():
    from ray.exceptions import ActorDiedError
    cause = root_cause(group_error(r1=ActorDiedError()))
    assert cause.kind == "died"
    assert advice(cause, 20, "/ckpt") == ("rerun the same command to resume from its last "
                                          "checkpoint (step 20)")
    assert advice(cause, None, "/ckpt") == ("rerun the same command to start again (no "
                                            "checkpoint yet)")
