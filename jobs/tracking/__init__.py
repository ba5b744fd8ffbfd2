"""MLflow for every job: runs (`runs`), rank 0's metric logger (`logger`), our models as
pickle-free pyfunc models (`pyfunc`), and a lean local MLflow server (`server`).

`jobs.tracking` is also the `loader_module` of every model we log: MLflow imports it and
calls `_load_pyfunc(data_path)`, so that name stays here. Names are loaded on first use,
so importing `jobs.tracking.server` (e.g. from a GPU benchmark) pulls in nothing else.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MetricLogger": "logger",
    "BertPyfunc": "pyfunc", "_load_pyfunc": "pyfunc", "download_model": "pyfunc",
    "find_hf_folder": "pyfunc",
    "PARENT_TAG": "runs", "RUN_NAME_TAG": "runs", "Tracker": "runs", "client": "runs",
    "default_tracking_uri": "runs", "get_or_create_run": "runs",
    "local_artifact_root": "runs", "safe_params": "runs",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jobs.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jobs.tracking.{_EXPORTS[name]}"), name)
