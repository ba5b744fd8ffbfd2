"""`bertpipe cluster up|down|status`: a local multi-node Ray cluster plus an MLflow server.

Everything listens on 127.0.0.1 where the tool allows it: the Ray head and extra raylets are
started with `--node-ip-address=127.0.0.1`, the dashboard (the Jobs API) and MLflow bind to
127.0.0.1. `up` and `status` list every port the cluster's processes listen on and whether
it is loopback-only (what `ss -ltnp` shows for their pids); whatever Ray binds beyond
loopback is flagged, and the cluster keeps Ray's token authentication on for it (the token
lives in `~/.ray/auth_token`; clients need `RAY_AUTH_MODE=token`, which `bertpipe submit`
sets). State (ports, pids, Ray's temp dir, the MLflow store) lives in one folder, so `down`
stops exactly what `up` started. `add_node` starts one more raylet (a lost node returning).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from jobs.tracking.server import free_port, start_mlflow, stop_group, wait_http

DEFAULT_DIR = Path.home() / ".cache" / "bertpipe" / "local-cluster"


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def client_env() -> dict[str, str]:
    """Environment for Ray clients (CLI, Jobs API) of a token-authenticated cluster."""
    env = dict(os.environ)
    if "RAY_AUTH_MODE" not in env and (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_MODE"] = "token"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def state(folder: Path) -> dict | None:
    path = folder / "cluster.json"
    return json.loads(path.read_text()) if path.exists() else None


def up(folder: Path = DEFAULT_DIR, head_cpus: int = 2, workers: int = 1,
       worker_cpus: int = 1, mlflow: bool = True) -> dict:
    """Start the head, `workers` more raylets and MLflow; returns the addresses."""
    folder = folder.absolute()
    current = state(folder)
    if current and _alive(current):
        return current
    if current:
        down(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _start(folder, head_cpus, workers, worker_cpus, mlflow)
    except BaseException:
        down(folder)  # never leave half a cluster behind
        raise


def _ray_env() -> dict[str, str]:
    env = client_env()
    env.pop("RAY_ADDRESS", None)
    # jobs run `python ...`: make that this environment's interpreter on every node
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # token auth on from the start: on a machine that never ran Ray there is no token yet, and
    # a head started without one would run unauthenticated (and its workers could not join)
    env["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE", "token")
    return env


def _raylets(info: dict) -> list[int]:
    """The cluster's raylet pids, oldest first (the head's first)."""
    procs = [p for p in _cluster_processes(info) if _name(p) == "raylet"]
    return [p.pid for p in sorted(procs, key=lambda p: p.create_time())]


def _start_worker(info: dict, cpus: int, env: dict[str, str]) -> int:
    """One more raylet joining the head; its pid."""
    before = set(_raylets(info))
    # each node's dashboard agent on a free port: Ray's fixed default (52365) is taken by the
    # first node or by any other Ray instance on this machine, and the Jobs API needs the
    # agent. Each node its own temp dir: nodes sharing one unpack a job's working_dir into the
    # same folder, and a second node replacing it pulls the folder out from under the job's
    # driver (its working directory is gone: os.getcwd() fails)
    node_dir = next(d for d in (f"{info['temp_dir']}-{n}" for n in range(1, 10_000))
                    if not Path(d).exists())
    subprocess.run([_ray_bin(), "start", f"--address={info['ray_address']}",
                    "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--temp-dir={node_dir}", "--disable-usage-stats"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    new = [pid for pid in _raylets(info) if pid not in before]
    return new[-1] if new else -1


def _start(folder: Path, head_cpus: int, workers: int, worker_cpus: int, mlflow: bool) -> dict:
    # Ray's sockets live under its temp dir and AF_UNIX paths stop at 107 bytes: keep it short
    temp_dir = Path(tempfile.gettempdir()) / \
        f"bertpipe-ray-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"
    gcs, dash, client = free_port(), free_port(), free_port()
    (folder / "cluster.json").write_text(json.dumps({"temp_dir": str(temp_dir), "nodes": 0}))
    env = _ray_env()
    if env["RAY_AUTH_MODE"] == "token":
        subprocess.run([_ray_bin(), "get-auth-token", "--generate"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([_ray_bin(), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={gcs}", f"--num-cpus={head_cpus}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    info = {"ray_address": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}",
            "temp_dir": str(temp_dir), "nodes": 1 + workers}
    info["raylets"] = _raylets(info)
    for _ in range(workers):
        info["raylets"].append(_start_worker(info, worker_cpus, env))
    info["worker_cpus"] = worker_cpus
    wait_http(f"{info['dashboard']}/api/version", 180, "the Ray dashboard")
    if mlflow:
        (folder / "cluster.json").write_text(json.dumps(info, indent=2))
        proc, uri = start_mlflow(folder / "mlflow", port=free_port(), timeout=180)
        info.update(mlflow=uri, mlflow_pid=proc.pid)
    info["listening"] = listeners(info)
    (folder / "cluster.json").write_text(json.dumps(info, indent=2))
    return info


def add_node(folder: Path = DEFAULT_DIR, cpus: int | None = None) -> dict:
    """Start one more raylet in the running cluster of `folder` (a node that returns after
    it was lost, or more capacity); returns the updated state."""
    folder = folder.absolute()
    info = state(folder)
    if not info or not _alive(info):
        raise RuntimeError(f"no cluster running (state folder {folder})")
    alive = set(_raylets(info))
    info["raylets"] = [pid for pid in info.get("raylets", []) if pid in alive]
    info["raylets"].append(_start_worker(info, cpus or info.get("worker_cpus", 1), _ray_env()))
    info["nodes"] = len(info["raylets"])
    info["listening"] = listeners(info)
    (folder / "cluster.json").write_text(json.dumps(info, indent=2))
    return info


def _name(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return p.name()
    return "?"


def _label(p: psutil.Process) -> str:
    """What a process is: its name, or for a Python process its module or script."""
    name = _name(p)
    if not name.startswith("python"):
        return name
    with contextlib.suppress(psutil.Error):
        args = p.cmdline()
        if "-m" in args[:-1]:
            return args[args.index("-m") + 1]
        script = next((a for a in args[1:] if a.endswith(".py")), None)
        if script:
            return "/".join(Path(script).parts[-2:])
    return name


def loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped forms."""
    address = address.removeprefix("::ffff:")
    return address.startswith("127.") or address == "::1"


def listeners(info: dict) -> list[dict]:
    """Every TCP port the cluster's processes (Ray's, MLflow's) listen on: address, port,
    process, pid, and whether only this machine can reach it."""
    procs = _cluster_processes(info)
    if info.get("mlflow_pid"):
        with contextlib.suppress(psutil.Error):
            lead = psutil.Process(info["mlflow_pid"])
            procs += [lead, *lead.children(recursive=True)]
    found = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found[(c.laddr.ip, c.laddr.port)] = {
                        "address": c.laddr.ip, "port": c.laddr.port, "process": _label(p),
                        "pid": p.pid, "loopback": loopback(c.laddr.ip)}
    return sorted(found.values(), key=lambda x: (x["loopback"], x["process"], x["port"]))


def _cluster_processes(info: dict) -> list[psutil.Process]:
    """Ray's processes of this cluster: those started with its temp dir, and those that only
    name its GCS address (Ray's client server, started with the host's own address)."""
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    gcs = f":{info['ray_address'].rsplit(':', 1)[1]}" if info.get("ray_address") else None
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            args = p.info["cmdline"] or ()
            if p.pid not in mine and any(info["temp_dir"] in a or (gcs and a.endswith(gcs))
                                         for a in args):
                procs.append(p)
    return procs


def _alive(info: dict) -> bool:
    return bool(_cluster_processes(info))


def down(folder: Path = DEFAULT_DIR) -> bool:
    """Stop what `up` started in `folder` (and nothing else); False if nothing was running."""
    folder = folder.absolute()
    info = state(folder)
    if info is None:
        return False
    procs = _cluster_processes(info)
    for p in list(procs):
        with contextlib.suppress(psutil.Error):
            procs.extend(p.children(recursive=True))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if info.get("mlflow_pid"):
        stop_group(info["mlflow_pid"])
    (folder / "cluster.json").unlink()
    for node_dir in (info["temp_dir"], *glob.glob(f"{info['temp_dir']}-*")):
        shutil.rmtree(node_dir, ignore_errors=True)
    return True


def _print_listeners(found: list[dict]) -> None:
    exposed = [x for x in found if not x["loopback"]]
    print(f"\nListening (TCP, {len(found)} ports; {len(exposed)} beyond loopback):")
    for x in found:
        where = "loopback only" if x["loopback"] else "ALL INTERFACES" \
            if x["address"] in ("0.0.0.0", "::") else "beyond loopback"
        host = f"[{x['address']}]" if ":" in x["address"] else x["address"]
        print(f"  {host + ':' + str(x['port']):<28} {x['process']:<30} pid {x['pid']:<8} {where}")
    if exposed:
        print("Ray binds these beyond 127.0.0.1 (token auth is on); firewall them from other "
              "machines: see README, 'Ports of a local cluster'.")


def _print_info(info: dict) -> None:
    print(f"Ray cluster: {info['nodes']} nodes, GCS at {info['ray_address']}")
    print(f"Ray dashboard and Jobs API: {info['dashboard']}")
    if info.get("mlflow"):
        print(f"MLflow: {info['mlflow']}")
    _print_listeners(info["listening"] if "listening" in info else listeners(info))
    print("\nUse it:")
    print(f"  export RAY_ADDRESS={info['dashboard']} RAY_AUTH_MODE=token")
    if info.get("mlflow"):
        print(f"  export MLFLOW_TRACKING_URI={info['mlflow']}")
    print("  bertpipe submit -- bertpipe workflow run jobs/workflows/demo.yaml")
    print("  bertpipe cluster down")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertpipe cluster", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["up", "down", "status", "add-node"],
                   help="add-node: one more raylet (--worker-cpus CPUs), e.g. a lost node back")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help=f"state folder (default: {DEFAULT_DIR})")
    p.add_argument("--head-cpus", type=int, default=2, help="logical CPUs of the head node")
    p.add_argument("--workers", type=int, default=1, help="raylets besides the head")
    p.add_argument("--worker-cpus", type=int, default=1, help="logical CPUs of each worker")
    p.add_argument("--no-mlflow", action="store_true", help="do not start an MLflow server")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "up":
        _print_info(up(args.dir, args.head_cpus, args.workers, args.worker_cpus,
                       mlflow=not args.no_mlflow))
    elif args.action == "add-node":
        _print_info(add_node(args.dir, args.worker_cpus))
    elif args.action == "down":
        print("stopped" if down(args.dir) else f"no cluster recorded in {args.dir}")
    else:
        info = state(args.dir.absolute())
        if not info or not _alive(info):
            print(f"no cluster running (state folder {args.dir})")
            return 1
        _print_info({**info, "listening": listeners(info)})  # what listens now
    return 0


if __name__ == "__main__":
    sys.exit(main())
