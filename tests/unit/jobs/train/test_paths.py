"""Path options are made absolute on the driver (`jobs.train.paths`), by the CLI runner, for every
config job, and no path-like option is left out."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import jobs.evaluate
from jobs.cli import JOBS, config_class
from jobs.train.paths import absolute, absolute_paths, absolute_tracking_uri, path_fields
from tests.helpers import job

# every string option of a config job that is NOT a path (columns, names, URIs of services)
NOT_PATHS = {"text_field", "text_column", "text_pair_column", "label_column", "choice_columns",
             "labels", "keep_columns", "metric", "address", "run_name", "tracking_uri",
             "experiment", "register_as", "model_alias", "parent_run_id"}
NOT_PATHS_OF = {"pretrain": {"model"},          # an architecture preset name (bert-tiny, ...)
                "prepare": {"word_segmenter"}}  # jieba or MODULE:FUNCTION


def test_relative_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute("shards/") == str(tmp_path / "shards")
    assert absolute("./a/../b.jsonl") == str(tmp_path / "a/../b.jsonl")
    assert absolute("~/x") == str(tmp_path / "home/x")
    assert absolute(["c/*.txt", "s3://b/k"]) == [str(tmp_path / "c/*.txt"), "s3://b/k"]
    for kept in ("s3://b/shards", "gs://b/x", "https://h/f.jsonl", "models:/wiki@phase1",
                 "runs:/abc/model", "mlflow-artifacts:/1/x", "file:///tmp/x", "/abs/path", "-",
                 "", None):
        assert absolute(kept) == kept
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_tracking_uri(None) is None


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_path_option_of_every_job_is_resolved_and_no_other_string_option_is(
        command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cls = config_class(command)
    hints = typing.get_type_hints(cls)
    names = path_fields(cls)
    assert names, command
    strings = {f.name for f in dataclasses.fields(cls) if "str" in str(hints[f.name])}
    # a new string option must be declared a path (PATHS) or listed here as not one
    others = NOT_PATHS | NOT_PATHS_OF.get(command, set())
    assert strings - set(names) <= others, strings - set(names) - others
    values = {n: ["rel/a", "rel/b"] if "list" in str(hints[n]) else f"rel/{n}" for n in names}
    cfg = absolute_paths(cls(**values, **({"tracking_uri": "sqlite:///m.db"}
                                          if "tracking_uri" in hints else {})))
    for n in names:
        got = getattr(cfg, n)
        want = values[n]
        assert got == ([str(tmp_path / v) for v in want] if isinstance(want, list)
                       else str(tmp_path / want)), n
    if "tracking_uri" in hints:
        assert cfg.tracking_uri == f"sqlite:///{tmp_path}/m.db"


def test_the_cli_runner_resolves_paths_before_the_job_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return {"ok": True}
    monkeypatch.setattr(jobs.evaluate, "run", fake_run)
    assert job("evaluate")(["--model", "model/", "--input", "test.jsonl",
                            "--predictions", "out/p.jsonl",
                            "--tracking-uri", "sqlite:///mlflow.db"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"ok": True}
    cfg = seen["cfg"]
    assert (cfg.model, cfg.input, cfg.predictions) == (
        str(tmp_path / "model"), str(tmp_path / "test.jsonl"), str(tmp_path / "out/p.jsonl"))
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert Path(cfg.model).is_absolute()


def test_scratch_folders_share_one_root_per_process_and_go_when_it_exits(tmp_path):
    code = ("import json, sys; from jobs.train.paths import scratch_dir\n"
            "a, b = scratch_dir('model-'), scratch_dir('finetune-best-')\n"
            "(a / 'weights').write_bytes(b'x' * 1000)\n"
            "print(json.dumps([str(a), str(b)]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path)},
                          cwd=Path(__file__).resolve().parents[4], check=True)
    a, b = map(Path, json.loads(done.stdout))
    assert a.parent == b.parent and a.parent.parent == tmp_path
    assert a.name.startswith("model-") and a.parent.name.startswith("bertpipe-")
    assert not a.parent.exists()          # removed, with the file in it, at exit
    assert list(tmp_path.iterdir()) == []


def test_a_killed_processs_scratch_root_is_removed_by_the_next_one_a_live_ones_is_kept(
        tmp_path):
    """SIGKILL skips exit handlers (a worker Ray stops, a lost node): what the dead process
    staged is removed when another process on the host makes its scratch folder; the root of
    a process still running, and one another host made in a shared temp folder, stay."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    repo = Path(__file__).resolve().parents[4]
    stage = ("import sys, time; from jobs.train.paths import scratch_dir\n"
             "d = scratch_dir('ckpt-r1-'); (d / 'part').write_bytes(b'x' * 1000)\n"
             "print(d, flush=True); time.sleep(600)\n")

    def staging() -> tuple[subprocess.Popen, Path]:
        p = subprocess.Popen([sys.executable, "-c", stage], env=env, cwd=repo, text=True,
                             stdout=subprocess.PIPE)
        return p, Path(p.stdout.readline().strip())
    (killed, dead), (alive, live) = staging(), staging()
    try:
        killed.kill()
        killed.wait(timeout=30)
        elsewhere = tmp_path / f"bertpipe-{killed.pid}-abc"   # same PID, another host
        elsewhere.mkdir()
        (elsewhere / "owner").write_text("another-host")
        assert (dead / "part").exists()                        # no exit handler ran
        subprocess.run([sys.executable, "-c", "from jobs.train.paths import scratch_dir\n"
                        "scratch_dir('model-')"], env=env, cwd=repo, check=True)
        assert not dead.parent.exists()
        assert (live / "part").exists() and elsewhere.exists()
    finally:
        alive.kill()
        alive.wait(timeout=30)
