"""Rank 0's metric sink: `log` never blocks training; a thread sends batches to MLflow.

`MetricLogger` buffers metrics and sends them from a background thread with `log_batch`;
while the server is unreachable it warns once, keeps the buffer (bounded: the oldest values
go first) and retries, and sends the backlog when the server is back. If the driver could
not create the run, the logger finds or creates it by run name itself. Training never waits
on MLflow, except at the very end: a server that answered earlier in the run and is down at
`close` (a restart, say) is waited for (`outage_wait_s`), so its backlog is not lost; one
that never answered gets one more try. Never reads data, never imports Ray.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque

from jobs.tracking.runs import client, get_or_create_run, local_artifact_root, warn


class MetricLogger:
    """Rank 0's metric sink: `log` never blocks; a thread sends batches and rides out outages."""

    def __init__(self, tracking_uri: str, run_id: str | None, experiment: str = "",
                 run_name: str = "", retry_s: float = 5.0, max_buffer: int = 1_000_000):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.experiment, self.run_name = experiment, run_name
        self.retry_s, self.max_buffer = retry_s, max_buffer
        self._buf: deque = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._deadline = float("inf")  # while closing: when to give up on a down server
        self._outage_wait = 0.0
        self._down = False
        self._reached = False  # the server answered at least once in this run
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        with self._lock:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._buf.append(Metric(k, float(v), now, int(step)))
            while len(self._buf) > self.max_buffer:  # bounded: drop the oldest
                self._buf.popleft()
                self.dropped += 1
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._buf)

    def _send_some(self, c) -> None:
        with self._lock:
            batch = [self._buf[i] for i in range(min(1000, len(self._buf)))]
        if not batch:
            return
        if self.run_id is None:  # the driver could not reach MLflow: find the run ourselves
            self.run_id, _ = get_or_create_run(c, self.experiment, self.run_name,
                                               artifact_root=local_artifact_root(self.tracking_uri))
        c.log_batch(self.run_id, metrics=batch)
        self._reached = True
        with self._lock:
            for _ in batch:
                self._buf.popleft()
        self.sent += len(batch)

    def _run(self) -> None:
        c = None
        while True:
            self._wake.wait(timeout=self.retry_s)
            self._wake.clear()
            try:
                c = c or client(self.tracking_uri)
                while self.pending():
                    self._send_some(c)
                if self._down:
                    print(f"[tracking] MLflow at {self.tracking_uri} is reachable again; "
                          "buffered metrics sent", file=sys.stderr, flush=True)
                    self._down = False
                if self._closing:
                    return
            except Exception as e:
                if not self._down:
                    warn(f"MLflow at {self.tracking_uri} unreachable ({type(e).__name__}); "
                          f"training goes on, metrics are buffered and retried every "
                          f"{self.retry_s:g}s")
                    self._down = True
                if self._closing and time.time() >= self._deadline:
                    return
                time.sleep(self.retry_s)

    def close(self, timeout: float = 30.0, outage_wait_s: float = 120.0) -> None:
        """Send what is buffered, then stop. Waits up to `timeout` s while the server answers;
        if it is down but answered earlier in the run, up to `outage_wait_s` s for it to come
        back; if it never answered, one more try. Warns about what could not be sent."""
        self._outage_wait = outage_wait_s if self._reached else 0.0
        if self._down and self._outage_wait and self.pending():
            warn(f"MLflow at {self.tracking_uri} is down; waiting up to {outage_wait_s:g}s for it "
                 f"to come back to send {self.pending()} buffered metric values")
        self._deadline = time.time() + self._outage_wait
        self._closing = True
        self._wake.set()
        self._thread.join(max(timeout, self._outage_wait) + 15)
        left = self.pending()
        if left or self.dropped:
            warn(f"{left + self.dropped} metric values could not be sent to {self.tracking_uri}")
