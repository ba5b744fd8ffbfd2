"""`bertpipe submit`: a cluster that was just started is waited for, other errors are not."""
from __future__ import annotations

import pytest


def test_a_cluster_without_a_job_agent_yet_is_retried_and_other_errors_are_not():
    from jobs.submit import _submit

    class Client:
        def __init__(self, fail_times: int, message: str):
            self.calls, self.fail_times, self.message = 0, fail_times, message

        def submit_job(self, **job):
            self.calls += 1
            if self.calls <= self.fail_times:
                raise RuntimeError(self.message)
            return f"raysubmit_{job['entrypoint']}"

    starting = Client(2, "Request failed with status code 500: No available agent to submit "
                         "job, please try again later..")
    assert _submit(starting, wait_s=30, pause=0, entrypoint="x") == "raysubmit_x" and starting.calls == 3
    broken = Client(1, "Request failed with status code 400: bad runtime env")
    with pytest.raises(RuntimeError, match="bad runtime env"):
        _submit(broken, wait_s=30, pause=0, entrypoint="x")
    assert broken.calls == 1
    never = Client(10**6, "No available agent to submit job")
    with pytest.raises(RuntimeError, match="No available agent"):
        _submit(never, wait_s=0, pause=0, entrypoint="x")
