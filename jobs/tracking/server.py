"""A lean local MLflow server, and the small network helpers services need.

`start_mlflow` launches `mlflow server` on 127.0.0.1 (unless told otherwise) with a SQLite
store and served artifacts, one worker and no job runner (≈ 8 s and 0.5 GiB instead of
≈ 17 s and 2.7 GiB), in its own process group so it stops as one, and waits until it
answers. `bertpipe cluster up` uses it for the cluster's server, the integration tests for
theirs. Never logs runs itself.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PORTS_FROM = 20000  # above Ray's default worker ports (10002-19999)
_given: set[int] = set()  # ports free_port handed out in this process


def free_port(low: int = PORTS_FROM) -> int:
    """A free TCP port on 127.0.0.1 for a server that another process starts next: one from
    `low` up to the kernel's ephemeral range, picked at random and never the same twice in this
    process. Not port 0's answer: an ephemeral port can be taken by any outgoing connection on
    the machine before the server binds it (a second Ray instance took a cluster's GCS port that
    way)."""
    try:
        top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        top = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, max(top, low + 1000))
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port found from {low}")


def wait_http(url: str, timeout: float, what: str,
              proc: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers at all (an HTTP error status is an answer)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 without a token is still an answer)
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{what} did not answer on {url} within {timeout:.0f}s")


def start_mlflow(root: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start a lean MLflow server storing under `root`; (process, URI) once it answers.
    Its output goes to ROOT/server.log."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"),
           "--host", host, "--port", str(port), "--workers", "1"]
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                                start_new_session=True)  # its own group: stopped as one
    uri = f"http://{host}:{port}"
    try:
        wait_http(f"{uri}/health", timeout, f"the MLflow server (see {root / 'server.log'})",
                  proc)
    except BaseException:
        stop_group(proc.pid)
        raise
    return proc, uri


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child so it stops counting
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
