"""`bertpipe submit [options] -- COMMAND...`: run a bertpipe command as a Ray job.

Wraps the Ray Jobs API: uploads the working directory (minus the virtualenv, outputs and
caches), sets the runtime environment, submits `COMMAND` (a leading `bertpipe` becomes
`python -m jobs.cli`, which needs no install on the cluster), then follows the job's logs
until it ends, or returns at once with `--no-wait` and prints how to follow it. The address
comes from `--address`, `$RAY_ADDRESS`, or the cluster `bertpipe cluster up` started.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from jobs.cluster import DEFAULT_DIR, client_env, state
from jobs.train.runtime import SETTINGS_ENV

EXCLUDES = [".venv/", ".git/", "demo-output/", "__pycache__/", "*.egg-info/", "mlruns/",
            ".pytest_cache/", "*.db"]
# Passed to the job when set here: where to reach services and the workers' plain settings,
# never credentials (those come from the cluster's own identity, or explicitly with --env).
PASS_ENV = ("MLFLOW_TRACKING_URI", *SETTINGS_ENV)


def resolve_address(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS", "").startswith("http"):
        return os.environ["RAY_ADDRESS"]
    info = state(DEFAULT_DIR)
    if info:
        return info["dashboard"]
    raise SystemExit("bertpipe submit: no Ray cluster address: pass --address "
                     "http://HEAD:8265, set RAY_ADDRESS, or start one with "
                     "`bertpipe cluster up`")


def entrypoint(command: list[str]) -> str:
    if not command:
        raise SystemExit("bertpipe submit: give the command after '--', e.g. "
                         "`bertpipe submit -- bertpipe prepare --input ...`")
    if command[0] == "bertpipe":
        command = ["python", "-m", "jobs.cli", *command[1:]]
    return shlex.join(command)


def runtime_env(working_dir: str, extra_env: list[str]) -> dict:
    env_vars = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    for item in extra_env:
        key, sep, value = item.partition("=")
        env_vars[key] = value if sep else os.environ.get(key, "")
    return {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars}


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertpipe submit", description=__doc__.split("\n")[0])
    p.add_argument("--address", help="Ray Jobs API address, e.g. http://127.0.0.1:8265")
    p.add_argument("--working-dir", default=".", help="folder uploaded with the job")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="environment variable for the job (repeatable)")
    p.add_argument("--job-id", help="submission id (default: generated)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    return p


def _submit(client, wait_s: float = 90.0, pause: float = 2.0, **job) -> str:
    """Submit; a cluster that was just started may have no job agent yet ("No available
    agent to submit job"): retried for up to `wait_s` seconds, then Ray's error stands."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(pause)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    address = resolve_address(args.address)
    os.environ.update(client_env())
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = _submit(client, entrypoint=entrypoint(command), submission_id=args.job_id,
                     runtime_env=runtime_env(str(Path(args.working_dir).absolute()), args.env))
    print(f"submitted {job_id} to {address}", flush=True)
    follow = f"RAY_AUTH_MODE=token ray job logs --address {address} --follow {job_id}"
    if args.no_wait:
        print(f"follow its logs:  {follow}")
        print(f"its status:       RAY_AUTH_MODE=token ray job status --address {address} "
              f"{job_id}")
        return 0
    asyncio.run(_follow(client, job_id))
    while (status := client.get_job_status(job_id)) not in (
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
