"""MLflow for every job: runs (`runs`), rank 0's metric logger (`logger`), our models as
pickle-free pyfunc models (`pyfunc`), and a lean local server (`server`).

`jobs.tracking` is also the `loader_module` of every model we log: MLflow imports it and
calls `_load_pyfunc(data_path)`, so that name stays here.
"""
from jobs.tracking.logger import MetricLogger
from jobs.tracking.pyfunc import BertPyfunc, _load_pyfunc, download_model, find_hf_folder
from jobs.tracking.runs import (
                                PARENT_TAG,
                                RUN_NAME_TAG,
                                Tracker,
                                client,
                                default_tracking_uri,
                                get_or_create_run,
                                local_artifact_root,
                                safe_params,
)

__all__ = ["MetricLogger", "BertPyfunc", "_load_pyfunc", "download_model", "find_hf_folder",
           "PARENT_TAG", "RUN_NAME_TAG", "Tracker", "client", "default_tracking_uri",
           "get_or_create_run", "local_artifact_root", "safe_params"]
