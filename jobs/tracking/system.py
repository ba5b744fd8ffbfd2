"""System metrics of a training process, logged by MLflow's own monitor to the run.

`start_system_metrics` starts `mlflow.system_metrics.SystemMetricsMonitor` on an existing run
(rank 0 of a pretraining job): CPU and memory (psutil), and with `nvidia-ml-py` installed and
a GPU present, each GPU's utilisation, memory and power, as `system/...` metrics every
`interval` seconds. Continues the run's system-metric steps after a restart. Without a run
id (MLflow unreachable at the start) or when the monitor cannot start, it returns None and
training goes on: system metrics are never worth a failed run. Never reads training data.
"""
from __future__ import annotations

import logging


def start_system_metrics(tracking_uri: str, run_id: str | None, interval: float = 10.0):
    """A started monitor (call `.finish()` at the end), or None."""
    if not run_id:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        # MLflow logs "skip GPU metrics" at INFO on machines without one: not worth a line
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval,
                                       resume_logging=True, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as e:  # an unreachable server, a missing psutil: train without them
        print(f"[tracking] no system metrics ({str(e).splitlines()[0][:200]})", flush=True)
        return None
