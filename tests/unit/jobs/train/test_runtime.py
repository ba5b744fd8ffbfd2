"""What every worker sets up before DeepSpeed loads its ops (jobs.train.runtime)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from jobs.train.runtime import apply_settings, extensions_dir


def test_a_worker_builds_ops_with_this_environments_ninja_whatever_its_path(monkeypatch):
    # a shell's PATH finds the system's ninja; a cluster node's finds the venv's first. Two
    # ninja versions on one build folder rebuild DeepSpeed's op from scratch each time.
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    apply_settings({"BERTPIPE_CACHE": "/nowhere"})
    tools = str(Path(sys.executable).parent)
    assert os.environ["PATH"].split(os.pathsep) == [tools, "/usr/local/bin", "/usr/bin", "/bin"]
    if (Path(tools) / "ninja").exists():   # pip installs ninja with DeepSpeed's build deps
        assert shutil.which("ninja") == str(Path(tools) / "ninja")
    apply_settings({})                                           # once is enough
    assert os.environ["PATH"].split(os.pathsep).count(tools) == 1


def test_the_op_cache_is_one_folder_per_python_environment(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folder = Path(extensions_dir())
    if sys.prefix != sys.base_prefix:                            # a venv
        assert folder == Path(sys.prefix) / "torch_extensions"
    else:
        assert folder == Path.home() / ".cache" / "bertpipe" / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/srv/ops")       # the user's choice wins
    assert extensions_dir() == "/srv/ops"


@pytest.fixture(autouse=True)
def _keep_environment(monkeypatch):
    """apply_settings writes os.environ; monkeypatch restores what the tests touch."""
    for key in ("BERTPIPE_CACHE", "TORCH_EXTENSIONS_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))


def test_a_local_ray_a_job_starts_has_no_preemption_watcher_unless_the_user_says(monkeypatch):
    from jobs.train.runtime import LOCAL_RAY_ENV, local_ray_settings
    for key in LOCAL_RAY_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
    local_ray_settings()
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "5"      # the user's value
