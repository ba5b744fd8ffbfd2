"""`bertpipe bench step` runs on CPU, times ours against transformers and reports MFU inputs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs.bench import step as bench_step
from jobs.cli import main as cli


@pytest.mark.slow
def test_cpu_bench_times_both_models_on_the_same_weights(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench_step.main(["--model", "bert-tiny", "--seq-len", "32", "--batch-size", "2",
                            "--steps", "2", "--warmup", "1", "--output-json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["models"]) == {"ours", "transformers"}
    assert r["loss_difference_eval"] < 1e-5  # the same model, so the same loss
    ours, theirs = r["models"]["ours"], r["models"]["transformers"]
    assert r["speedup_vs_transformers"] == pytest.approx(theirs["ms_per_step"] / ours["ms_per_step"])
    assert ours["tokens_per_s"] == pytest.approx(2 * 32 * 1000 / ours["ms_per_step"])
    assert r["config"]["max_predictions"] == 5
    assert "transformers / ours time" in capsys.readouterr().out


def test_bad_options_are_one_line_errors_with_exit_code_2(capsys):
    assert cli(["bench", "step", "--model", "bert-huge"]) == 2
    err = capsys.readouterr().err
    assert "bert-huge" in err and len(err.strip().splitlines()) == 1


def test_bench_step_imports_neither_ray_nor_mlflow():
    code = ("import sys, jobs.bench.step; "
            "bad = [m for m in ('ray', 'mlflow', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
