"""Local paths made absolute on the driver, before any Ray worker starts.

Ray workers, Ray Data tasks and Ray Train storage run in other working directories, so a
relative `--data shards/` that the driver found would name nothing there. Every config class
lists its path fields in a `PATHS` class attribute; `absolute_paths(cfg)` returns the config
with those made absolute (a list field element-wise), and a relative SQLite tracking URI
(`sqlite:///mlflow.db`) made absolute too. Left alone: empty values, `-`, object-store URIs
(s3://, gs://, http(s)://), MLflow model URIs (models:/, runs:/, mlflow-artifacts:/) and other
URIs (anything with `://` or a scheme such as `file:`). `~` is expanded. Idempotent. The CLI
runner (`jobs.cli.run_job`) and the workflow's stage builder call it; so does the pretraining
driver's `check_job` for callers that build configs in Python. Never checks that a path
exists (the jobs do, with errors that name the flag).

`scratch_dir(prefix)`: a new local folder for what a process downloads or stages (a model from
MLflow or object storage, a fine-tune's best epoch in local mode, a checkpoint on its way to
storage), under one temp folder per process that is removed when the process exits. A process
that is killed (SIGKILL, a lost node, Ray stopping its workers) runs no exit handler: the next
process on the node to make its scratch folder removes the roots of this host's processes
that are no longer running.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from jobs.train.runtime import MLFLOW_MODEL_SCHEMES

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # a scheme: s3:, models:, file:, sqlite: ...


def absolute(value):
    """One path value (str, list of str or None) with local relative paths made absolute."""
    if isinstance(value, (list, tuple)):
        return type(value)(absolute(v) for v in value)
    if not isinstance(value, (str, Path)) or str(value) in ("", "-"):
        return value
    text = str(value)
    if text.startswith(MLFLOW_MODEL_SCHEMES) or (_URI.match(text) and not _drive(text)):
        return value
    return str(Path(text).expanduser().absolute())


def _drive(text: str) -> bool:
    """A Windows drive letter (C:\\...) is a path, not a scheme."""
    return len(text) > 2 and text[1] == ":" and text[2] in "\\/"


def absolute_tracking_uri(uri: str | None) -> str | None:
    """`sqlite:///relative.db` -> `sqlite:////abs/relative.db`; every other URI as is."""
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().absolute()}"
    return uri


def path_fields(cls) -> tuple[str, ...]:
    """The path fields a config class declares (its `PATHS`), over its bases."""
    out: list[str] = []
    for klass in reversed(cls.__mro__):
        for name in getattr(klass, "PATHS", ()) or ():
            if name not in out:
                out.append(name)
    return tuple(out)


def absolute_paths(cfg):
    """`cfg` (a dataclass) with its `PATHS` fields and SQLite tracking URI made absolute."""
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {name: absolute(getattr(cfg, name)) for name in path_fields(type(cfg))
               if name in names}
    if "tracking_uri" in names:
        changes["tracking_uri"] = absolute_tracking_uri(cfg.tracking_uri)
    changes = {k: v for k, v in changes.items() if v != getattr(cfg, k)}
    return dataclasses.replace(cfg, **changes) if changes else cfg


_scratch_root: list[Path] = []
_OWNER = "owner"


def scratch_dir(prefix: str) -> Path:
    """A new folder under this process's scratch folder (`$TMPDIR/bertpipe-PID-*`), removed
    with everything in it when the process exits: a model downloaded for one run, or a staged
    best epoch, is not left in /tmp after the job (they were: 11 GB after a day of tests)."""
    if not _scratch_root:
        sweep_scratch()
        root = Path(tempfile.mkdtemp(prefix=f"bertpipe-{os.getpid()}-"))
        (root / _OWNER).write_text(socket.gethostname())
        atexit.register(shutil.rmtree, root, True)
        _scratch_root.append(root)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_root[0]))


def sweep_scratch() -> list[Path]:
    """Remove the scratch roots of processes on this host that exited without removing their
    own (killed ones); returns them. A root is kept unless its `owner` file names this host
    (a temp folder shared with other machines or containers) and no process has its PID; a
    reused PID keeps a dead process's root until that process ends too."""
    gone = []
    host = socket.gethostname()
    for root in Path(tempfile.gettempdir()).glob("bertpipe-*-*"):
        pid = root.name.split("-")[1]
        try:
            if not pid.isdigit() or (root / _OWNER).read_text() != host or _running(int(pid)):
                continue
        except OSError:  # not a scratch root, or one being made or removed right now
            continue
        shutil.rmtree(root, ignore_errors=True)
        gone.append(root)
    return gone


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
