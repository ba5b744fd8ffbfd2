"""What a failed Ray Train run tells its user: the root cause among the ranks' errors, in one
line, and whether rerunning the same command can help.

When one rank fails, the others usually fail too, of that failure (a collective whose peer
is gone, a reset connection), so Ray's `WorkerGroupError` holds several errors. `root_cause`
picks the one that explains the rest: an error the user can fix (bad input, config, model),
then a full disk, then a dead worker or node, then anything else. `advice` says what to do:
fix the input (rerunning cannot help), free space then rerun, or just rerun to resume.
Never starts or stops anything.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "[errno 28]", "[Errno 28]")


@dataclass
class Cause:
    kind: str
    """user (bad input/config/model: rerunning cannot help), disk_full, died, other"""
    line: str
    """The root error's first line"""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def disk_full(e: BaseException) -> bool:
    """A write failed because a filesystem is full (errno, or pyarrow's and torch's text)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "errno", None) in DISK_FULL_ERRNOS or \
                any(t in str(e) for t in DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _user_error(e: BaseException) -> bool:
    import sys

    from jobs.config import ConfigError
    from pipeline.errors import InputError
    known: tuple = (ConfigError, InputError)
    model_config = sys.modules.get("model.config")  # ModelError, without importing torch
    if model_config is not None:
        known += (model_config.ModelError,)
    return isinstance(e, known)


def _unwrap(e: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (worker traceback holder, task error)."""
    for attr in ("_base_exc", "cause"):
        inner = getattr(e, attr, None)
        if isinstance(inner, BaseException) and inner is not e:
            return _unwrap(inner)
    return e


def root_cause(e: BaseException) -> Cause:
    """The error among a failed run's that explains the others."""
    failures = getattr(e, "worker_failures", None)
    if failures is None and getattr(e, "controller_failure", None) is not None:
        failures = {0: e.controller_failure}
    errors = [_unwrap(x) for x in (failures or {}).values()] or [_unwrap(e)]
    for kind, test in (("user", _user_error), ("disk_full", disk_full),
                       ("died", _died), ("other", lambda _: True)):
        found = [x for x in errors if test(x)]
        if found:
            line = str(found[0]).strip().splitlines()[0] if kind == "user" \
                else first_line(found[0])
            return Cause(kind, line[:400])
    raise AssertionError("unreachable")


def _died(e: BaseException) -> bool:
    try:
        from ray.exceptions import ActorDiedError, NodeDiedError, RayActorError, WorkerCrashedError
    except ImportError:
        return False
    return isinstance(e, (ActorDiedError, NodeDiedError, RayActorError, WorkerCrashedError))


def advice(cause: Cause, resume_step: int | None, where: str) -> str:
    """What to do next, for a run whose last complete checkpoint is at `resume_step`."""
    again = (f"rerun the same command to resume from its last checkpoint (step {resume_step})"
             if resume_step else "rerun the same command to start again (no checkpoint yet)")
    if cause.kind == "user":
        return "fix that first: resuming as it is cannot help"
    if cause.kind == "disk_full":
        return f"free space on {where} (or lower --keep-checkpoints), then {again}"
    return again
