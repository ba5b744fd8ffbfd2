"""The real MiniLM fine-tuned on small datasets the tests build, for the tasks without a
shipped dataset: SQuAD 2.0-style QA (long contexts split into windows, unanswerable
questions), SWAG-style multiple choice, BIO named entities. Each must learn well past chance.

The data are templates over word pools; the dev sets use names the training sets never
show, so copying the right span or word has to come from the context. QA and NER run in Ray
Train's local mode (`num_workers 0`, in this process), saving ~10 s of worker start-up each;
multiple choice runs on two Ray Train workers with DeepSpeed.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers import job

evaluate = job("evaluate")
finetune = job("finetune")


pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NAMES = ["Anna", "Boris", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Igor", "Jana",
         "Kofi", "Lena", "Marco", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]
DEV_NAMES = ["Ulla", "Viktor", "Wen", "Ximena", "Yusuf", "Zofia", "Arjun", "Beatriz"]
CITIES = ["Paris", "Lagos", "Oslo", "Lima", "Hanoi", "Cairo", "Quito", "Dublin", "Kyoto",
          "Perth", "Tunis", "Riga", "Accra", "Porto", "Minsk", "Dhaka"]
JOBS = ["teacher", "baker", "pilot", "nurse", "farmer", "lawyer", "painter", "chemist"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
THINGS = ["ball", "car", "hat", "cup", "kite", "bag", "chair", "lamp"]
ORGS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_finetune(capsys, *args: str) -> dict:
    code = finetune(list(args))
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out[-5:]
    return json.loads(out[-1])  # the summary is the last line


COMMON = ("--num-workers", "0", "--log-every", "10", "--max-seq-length", "64")


# ------------------------------------------------------------------ question answering

def squad_rows(rng: random.Random, n: int, names: list[str], prefix: str) -> list[dict]:
    """Bios with distractors; 1 in 4 questions asks about someone the context never names;
    every third context is long enough to need two windows at 48 tokens."""
    rows = []
    for i in range(n):
        who, other, absent = rng.sample(names, 3)
        city, city2 = rng.sample(CITIES, 2)
        job, year = rng.choice(JOBS), str(rng.randint(1900, 2010))
        sentences = [f"{who} was born in {city} in {year}.", f"{who} works as a {job}.",
                     f"{other} moved to {city2} later."]
        if i % 3 == 0:
            sentences += [f"{other} often wrote letters about the markets, the old bridges and "
                          f"the long summer evenings of {city2}."]
        rng.shuffle(sentences)
        context = " ".join(sentences)
        kind = rng.randrange(4)
        if kind == 3:
            q, answer = f"Where was {absent} born?", None
        else:
            q, answer = [(f"Where was {who} born?", city), (f"What does {who} work as?", job),
                         (f"When was {who} born?", year)][kind]
        # the answer's occurrence in the sentence about `who` (a city may appear twice)
        own = next(s for s in sentences if s.startswith(who) and answer and answer in s) \
            if answer else None
        answers = [] if answer is None else [{"text": answer, "answer_start":
                                              context.index(own) + own.index(answer)}]
        rows.append({"id": f"{prefix}{i}", "question": q, "context": context, "answers": answers})
    return rows


@pytest.mark.beside
def test_question_answering_with_windows_and_unanswerables_learns_past_chance(
        tmp_path, capsys, minilm_dir, sqlite_tracking):
    rng = random.Random(0)
    train = write_jsonl(tmp_path / "train.jsonl", squad_rows(rng, 256, NAMES, "t"))
    dev_rows = squad_rows(rng, 80, DEV_NAMES, "d")
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_rows)
    summary = run_finetune(
        capsys, "--task", "question-answering", "--model", str(minilm_dir), "--train", train,
        "--validation", dev, "--doc-stride", "16", "--max-query-length", "16", "--epochs", "2",
        "--batch-size", "16", "--learning-rate", "2e-4", "--output", str(tmp_path / "qa"),
        "--tracking-uri", sqlite_tracking(tmp_path), *COMMON, "--max-seq-length", "48")
    m = summary["metrics"]
    unanswerable = sum(1 for r in dev_rows if not r["answers"]) / len(dev_rows)
    # always "no answer" scores `unanswerable` (1/4); a span copier must do far better
    assert m["dev_f1"] > unanswerable + 0.3, m
    assert m["dev_exact_match"] > unanswerable + 0.25, m
    assert "dev_null_threshold" in m  # SQuAD 2.0: the threshold was tuned on dev
    spec = json.loads((tmp_path / "qa" / "bertpipe_task.json").read_text())
    assert spec["version_2_with_negative"] and spec["null_threshold"] == m["dev_null_threshold"]
    # the saved model evaluates the same: its task file carries windows and the threshold
    code = evaluate(["--model", str(tmp_path / "qa"), "--input", dev,
                     "--predictions", str(tmp_path / "pred.jsonl"),
                     "--tracking-uri", sqlite_tracking(tmp_path)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["metrics"]["f1"] == pytest.approx(m["dev_f1"])
    first = json.loads((tmp_path / "pred.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "prediction", "null_diff", "gold"}


# ------------------------------------------------------------------ multiple choice

def swag_rows(rng: random.Random, n: int, names: list[str]) -> list[dict]:
    """The right ending repeats the colour the context gave; three endings name others."""
    rows = []
    for _ in range(n):
        who, thing = rng.choice(names), rng.choice(THINGS)
        colors = rng.sample(COLORS, 4)
        label = rng.randrange(4)
        right = colors[0]
        colors[0], colors[label] = colors[label], colors[0]
        rows.append({"sent1": f"{who} bought a {right} {thing} yesterday.",
                     "sent2": f"The {thing} that {who} bought is",
                     **{f"ending{i}": f"{c}." for i, c in enumerate(colors)}, "label": label})
    return rows


def test_multiple_choice_on_two_deepspeed_workers_learns_past_chance(tmp_path, capsys,
                                                                     minilm_dir, ray_local,
                                                                     sqlite_tracking):
    """Also the distributed path: 2 Ray Train workers, DeepSpeed ZeRO-2, dev outputs
    gathered from both workers."""
    rng = random.Random(1)
    train = write_jsonl(tmp_path / "train.jsonl", swag_rows(rng, 192, NAMES))
    dev = write_jsonl(tmp_path / "dev.jsonl", swag_rows(rng, 64, DEV_NAMES))
    summary = run_finetune(
        capsys, "--task", "multiple-choice", "--model", str(minilm_dir), "--train", train,
        "--validation", dev, "--text-pair-column", "sent2", "--epochs", "1", "--batch-size", "16",
        "--learning-rate", "1e-4", "--tracking-uri", sqlite_tracking(tmp_path),
        *COMMON, "--num-workers", "2", "--cpus-per-worker", "1", "--deepspeed",
        "--zero-stage", "2", "--storage-path", str(tmp_path / "ray"))
    assert summary["metrics"]["dev_accuracy"] > 0.6, summary["metrics"]  # chance: 0.25
    assert Path(summary["checkpoint"]).is_dir()  # the best epoch, in Ray Train storage


# ------------------------------------------------------------------ token classification

def ner_sentences(rng: random.Random, n: int, names: list[str]) -> list[dict]:
    templates = [
        "{P} {L} lives in {C} .", "{P} works for {O} in {C} .",
        "Yesterday {O} hired {P} {L} .", "In {C} , {P} met the {O} team .",
    ]
    tags_of = {"P": ["B-PER"], "L": ["I-PER"], "C": ["B-LOC"], "O": ["B-ORG"]}
    rows = []
    for _ in range(n):
        words, tags = [], []
        for w in rng.choice(templates).split():
            if w.startswith("{"):
                slot = w[1]
                value = {"P": rng.choice(names), "L": rng.choice(names) + "son",
                         "C": rng.choice(CITIES), "O": rng.choice(ORGS)}[slot]
                words.append(value)
                tags += tags_of[slot]
            else:
                words.append(w)
                tags.append("O")
        rows.append({"tokens": words, "tags": tags})
    return rows


@pytest.mark.beside
def test_token_classification_on_conll_learns_entities(tmp_path, capsys, minilm_dir,
                                                       sqlite_tracking):
    rng = random.Random(2)

    def conll(path: Path, rows: list[dict]) -> str:
        path.write_text("-DOCSTART- O\n\n" + "\n\n".join(
            "\n".join(f"{w} {t}" for w, t in zip(r["tokens"], r["tags"])) for r in rows) + "\n")
        return str(path)
    train = conll(tmp_path / "train.conll", ner_sentences(rng, 240, NAMES))
    dev = conll(tmp_path / "dev.conll", ner_sentences(rng, 80, DEV_NAMES))
    summary = run_finetune(
        capsys, "--preset", "finetune-conll-ner", "--model", str(minilm_dir), "--train", train,
        "--validation", dev, "--epochs", "2", "--batch-size", "16", "--learning-rate", "1e-4",
        "--tracking-uri", sqlite_tracking(tmp_path), *COMMON)
    assert summary["metric"] == "f1"
    assert summary["metrics"]["dev_f1"] > 0.7, summary["metrics"]  # entity-level, seqeval's
