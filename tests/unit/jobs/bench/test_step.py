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


def test_wiki_lengths_follow_the_shipped_histogram_and_files_are_read(tmp_path):
    from jobs.bench.lengths import WIKI_LENGTHS, sample_lengths
    lengths = sample_lengths("wiki", 128, 20000, seed=0)
    width, full, counts = WIKI_LENGTHS[128]
    assert min(lengths) >= 8 and max(lengths) == 128
    assert sum(n == 128 for n in lengths) / len(lengths) == pytest.approx(
        full / (full + sum(counts)), abs=0.01)
    assert sum(lengths) / len(lengths) == pytest.approx(92.0, abs=1.0)  # the shards' mean
    f = tmp_path / "lengths.txt"
    f.write_text("20 40\n60\n")
    assert set(sample_lengths(str(f), 64, 50, seed=0)) == {20, 40, 60}
    assert cli(["bench", "step", "--lengths", str(f), "--seq-len", "32"]) == 2


@pytest.mark.slow
def test_the_suite_times_packed_and_padded_against_transformers_on_the_same_sequences(
        monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_step, "SUITE", [("bert-tiny", 64, 8)])
    out = tmp_path / "suite.json"
    assert bench_step.main(["--suite", "--steps", "1", "--warmup", "0",
                            "--output-json", str(out)]) == 0
    packed, padded = json.loads(out.read_text())
    assert set(packed["models"]) == {"ours", "ours-padded", "transformers"}
    assert set(padded["models"]) == {"ours", "transformers"}
    m = packed["models"]
    assert m["ours"]["rows"] < 8 == m["ours-padded"]["rows"] == m["transformers"]["rows"]
    assert m["ours"]["padding"] < m["ours-padded"]["padding"]
    assert packed["real_tokens"] == padded["real_tokens"] < 8 * 64  # the wiki mix, not full
    assert packed["loss_difference_eval"] < 1e-5  # same weights, same sequences, any layout
    # MFU's numerator counts real tokens only: the same for every layout
    assert m["ours"]["tokens_per_s"] * m["ours"]["ms_per_step"] == pytest.approx(
        m["ours-padded"]["tokens_per_s"] * m["ours-padded"]["ms_per_step"])
    text = capsys.readouterr().out
    assert "| bert-tiny | 64 | packed | 8 |" in text and "| bert-tiny | 64 | padded | 8 |" in text
    assert "ours padded / ours packed time" in text


def test_bad_options_are_one_line_errors_with_exit_code_2(capsys):
    assert cli(["bench", "step", "--model", "bert-huge"]) == 2
    err = capsys.readouterr().err
    assert "bert-huge" in err and len(err.strip().splitlines()) == 1


def test_python_m_bench_step_runs_on_torch_alone():
    """What a bare GPU machine runs: no Ray, MLflow, pyarrow, DeepSpeed (nor transformers
    with --no-compare) gets imported on the way (-X importtime lists every import)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "jobs.bench.step",
                          "--model", "bert-tiny", "--seq-len", "32", "--batch-size", "4",
                          "--steps", "1", "--warmup", "0", "--packing", "--no-compare"],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported and "ours padded / ours packed" in run.stdout
    assert not imported & {"ray", "mlflow", "pyarrow", "deepspeed", "transformers"}


def test_sync_debug_without_cuda_is_a_one_line_error(capsys):
    assert cli(["bench", "step", "--sync-debug"]) == 2
    err = capsys.readouterr().err
    assert "--sync-debug" in err and len(err.strip().splitlines()) == 1
