"""The README's commands, as written, with their relative paths, through the real CLI.

Every `.venv/bin/bertpipe NAME ...` line of README.md's bash blocks is extracted (continued
lines joined) and, for the first command of each data and model job, run: prepare -> pretrain -> finetune ->
evaluate -> probe -> embed, each with the README's own arguments followed by a few budget
flags (fewer steps, epochs and examples: the same command, sized for a CPU test) and the
names the next command looks up (`--register-as`). The working directory is a fresh folder
laid out as the README assumes (corpus/, train.jsonl, dev.jsonl, test.jsonl, docs.jsonl), so
the outputs (shards/, out/, vectors/) land there and never in the repo; `.venv/bin/bertpipe`
is `jobs.cli:main`, called in this process. The Ray workers were started from another
folder (the session's local Ray), which is what makes a relative path that reached them fail.
MLflow is the session's server, through $MLFLOW_TRACKING_URI (the README's default when set).
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from jobs.assets import wiki_topics
from jobs.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
RUN = ("prepare", "pretrain", "finetune", "evaluate", "probe", "embed")
BUDGET = {  # appended to the README's arguments
    "prepare": [],
    "pretrain": ["--max-steps", "4", "--log-every", "2", "--eval-samples", "64",
                 "--register-as", "wiki-bert", "--model-alias", "phase1"],
    "finetune": ["--epochs", "1", "--max-seq-length", "64", "--seeds", "1", "--num-workers", "0",
                 "--register-as", "wiki-bert-classification"],
    "evaluate": [],
    "probe": ["--max-seq-length", "64"],
    "embed": [],
}
PLACEHOLDERS = {"DIR_OR_URI": "models:/wiki-bert@phase1"}
OUTPUTS = ("shards", "out", "vectors", "mlflow.db", "mlruns")  # what the commands write


def readme_commands() -> list[list[str]]:
    """argv (after `bertpipe`) of every `.venv/bin/bertpipe` command in README.md's bash
    blocks, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s#\s.*$", "", line).strip()
            if line.startswith(".venv/bin/bertpipe "):
                out.append([PLACEHOLDERS.get(a, a) for a in shlex.split(line)[1:]])
    return out


def split_commands() -> tuple[list[list[str]], list[list[str]]]:
    """(the first command of each data and model job, in README order; the later ones: other
    sections' variations, such as the Chinese prepare, which name files of their own)."""
    first: dict[str, list[str]] = {}
    later = []
    for argv in readme_commands():
        if argv[0] in RUN:
            (later.append(argv) if argv[0] in first else first.setdefault(argv[0], argv))
    return list(first.values()), later


def test_the_readme_names_the_data_and_model_jobs_in_the_order_they_run():
    names = [argv[0] for argv in split_commands()[0]]
    assert names == list(RUN), names


def test_the_readmes_other_job_commands_parse_into_valid_configs():
    from jobs.cli import build_parser, config_class
    from jobs.config import resolve
    later = split_commands()[1]
    assert later  # the Chinese section's prepare at least
    for argv in later:
        args = build_parser(argv[0]).parse_args(argv[1:])
        resolve(config_class(argv[0]), args, command=argv[0]).validate()


@pytest.fixture
def readme_root(tmp_path, wiki_jsonl, mlflow_server, monkeypatch):
    """A working folder with the files the README's commands name."""
    docs = [json.loads(line) for line in wiki_jsonl.read_text().splitlines()[:400]]
    (tmp_path / "corpus").mkdir()
    for i in range(2):  # `--format text`: a document per blank-line-separated block
        (tmp_path / "corpus" / f"wiki-{i}.txt").write_text(
            "\n\n".join(d["text"] for d in docs[i::2]) + "\n")
    splits = wiki_topics(tmp_path / "topics", (96, 48, 48))
    for split in ("train", "dev", "test"):
        shutil.copyfile(splits[split], tmp_path / f"{split}.jsonl")
    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": d["text"]}) + "\n" for i, d in enumerate(docs[:16])))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readmes_commands_run_as_written_with_relative_paths(readme_root, ray_local,
                                                                 capsys):
    before = {name: (REPO / name).exists() for name in OUTPUTS}
    summaries = {}
    for argv in split_commands()[0]:  # workflow, cluster, submit, bench: their own tests
        name = argv[0]
        code = main([*argv, *BUDGET[name]])
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 0, f"`bertpipe {' '.join(argv)}` exited {code}: {out[-3:]}"
        summaries[name] = json.loads(out[-1])
    root = readme_root
    assert json.loads((root / "shards" / "manifest.json").read_text())["shards"]
    pretrain = summaries["pretrain"]
    assert pretrain["metrics"]["step"] == 4
    assert Path(pretrain["checkpoint"]).is_relative_to(root / "out" / "pretrain")
    assert "unigram_mlm_loss" not in pretrain["metrics"] and pretrain["unigram"]["loss"] > 0
    assert summaries["finetune"]["registered_uri"] == "models:/wiki-bert-classification@best"
    assert "gain_over_scratch" in summaries["finetune"]  # the README's command has a baseline
    assert 0 <= summaries["evaluate"]["metrics"]["accuracy"] <= 1
    assert Path(summaries["evaluate"]["predictions"]).is_relative_to(root)
    assert "test_gain_over_scratch" in summaries["probe"]["metrics"]
    assert list((root / "vectors").glob("*.parquet"))
    # nothing landed in the repo (where the Ray workers run)
    assert {name: (REPO / name).exists() for name in OUTPUTS} == before
