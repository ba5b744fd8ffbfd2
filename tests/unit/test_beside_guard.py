"""`make test`'s second process (BERTPIPE_TESTS_BESIDE=1) refuses to start Ray: a test marked
`beside` that starts Ray fails with a line naming the mark, instead of racing the other
process's Ray instance for ports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STARTS_RAY = "def test_starts_ray():\n    import ray\n    ray.init(num_cpus=1)\n    ray.shutdown()\n"


def test_a_test_that_starts_ray_fails_in_the_beside_process_naming_the_mark(tmp_path):
    (tmp_path / "test_starts_ray.py").write_text(STARTS_RAY)
    # never without the variable here: this test itself runs beside the Ray tests
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                           "-p", "no:cacheprovider", str(tmp_path)], cwd=REPO,
                          env={**os.environ, "BERTPIPE_TESTS_BESIDE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "1 failed" in done.stdout
    assert "RuntimeError: this test starts Ray but runs beside the integration suite" in \
        done.stdout
