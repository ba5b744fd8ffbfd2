"""pipeline.tasks.readers: every supported format read to the same rows; user errors as one line."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.tasks.readers import detect_format, read_conll, read_rows, read_squad, require_columns

ROWS = [{"text": "a good film", "label": "pos"}, {"text": "a bad, bad film", "label": "neg"}]

SQUAD = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{
    "context": "Paris is the capital of France.",
    "qas": [{"id": "q1", "question": "What is the capital of France?",
             "answers": [{"text": "Paris", "answer_start": 0}]},
            {"id": "q2", "question": "What is the capital of Mars?", "answers": [],
             "plausible_answers": [{"text": "Paris", "answer_start": 0}],
             "is_impossible": True}]}]}]}


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.csv", "d.tsv", "d.parquet",
                                  "d.json"])
def test_every_table_format_reads_to_the_same_rows(tmp_path, name):
    path = tmp_path / name
    if name.startswith("d.jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    elif name == "d.csv":
        path.write_text('text,label\na good film,pos\n"a bad, bad film",neg\n')
    elif name == "d.tsv":
        path.write_text("text\tlabel\na good film\tpos\na bad, bad film\tneg\n")
    elif name == "d.json":
        path.write_text(json.dumps(ROWS, indent=2))
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert read_rows(str(path)) == ROWS


def test_an_unknown_suffix_asks_for_the_format(tmp_path):
    with pytest.raises(InputError, match="--format"):
        detect_format(str(tmp_path / "data.xyz"))
    assert detect_format("x.data", "csv") == "csv"


def test_a_missing_file_is_one_error_naming_it(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        read_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="nope.parquet: no such file"):
        read_rows(str(tmp_path / "nope.parquet"))


def test_a_bad_jsonl_line_names_its_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "x"}\n{"text": \n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        read_rows(str(path))


def test_a_missing_column_is_one_error_naming_the_column_and_the_ones_there():
    with pytest.raises(InputError, match=r"no column 'sentence' \(columns: text, label\)"):
        require_columns(ROWS, ["text", "sentence"], "train.jsonl")


def test_conll_reads_sentences_with_the_tag_in_the_last_column(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
                    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    assert read_conll(str(path)) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
                                     {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]


def test_squad_json_flattens_to_one_row_per_question_and_keeps_unanswerables(tmp_path):
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(SQUAD))
    rows = read_squad(str(path))
    assert [r["id"] for r in rows] == ["q1", "q2"]
    assert rows[0]["answers"] == [{"text": "Paris", "answer_start": 0}]
    assert not rows[0]["is_impossible"]
    assert rows[1]["answers"] == [] and rows[1]["is_impossible"]  # plausible answers unused


def test_squad_as_a_table_of_hf_style_rows(tmp_path):
    path = tmp_path / "squad.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "Who?", "context": "Ann ran.",
                                "answers": {"text": ["Ann"], "answer_start": [0]}}) + "\n")
    assert read_squad(str(path))[0]["answers"] == [{"text": "Ann", "answer_start": 0}]


def test_rows_are_read_from_s3(s3_server):
    import boto3
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="task-data")
    s3.put_object(Bucket="task-data", Key="train.jsonl",
                  Body="".join(json.dumps(r) + "\n" for r in ROWS).encode())
    assert read_rows("s3://task-data/train.jsonl") == ROWS
