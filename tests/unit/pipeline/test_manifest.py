"""`Manifest`: the typed manifest reads what `prepare` has always written, and writes it back."""
from __future__ import annotations

import json

import pytest

from pipeline.errors import InputError
from pipeline.manifest import Manifest

# a manifest.json as the previous version of `prepare` wrote it (schema version 1)
WRITTEN_BEFORE = {
    "schema_version": 1, "job_key": "ab" * 32,
    "config": {"input": ["corpus.jsonl"], "output": "out", "format": "jsonl", "nsp": True},
    "vocab": {"file": "vocab.txt", "sha256": "cd" * 32, "size": 4096, "do_lower_case": True},
    "max_seq_length": 128, "bin_size": 32, "nsp": True,
    "inputs": [{"path": "/data/corpus.jsonl", "size": 123, "sha256": "ef" * 32}],
    "skipped": {"count": 1, "by_reason": {"invalid UTF-8": 1}},
    "counts": {"documents": 3, "sentences": 9, "input_tokens": 90, "instances": 4,
               "tokens": 100, "masked_tokens": 15, "random_next": 2},
    "instances_per_bin": {"0": 1, "3": 3},
    "shards": [{"file": "shard-00000.parquet", "rows": 4, "sha256": "01" * 32,
                "rows_per_bin": {"0": 1, "3": 3}, "tokens": 100}],
    "seconds": 1.5,
}


def test_a_manifest_written_before_loads_typed_and_writes_back_the_same_json():
    m = Manifest.from_json(json.dumps(WRITTEN_BEFORE))
    assert m.vocab.size == 4096 and m.shards[0].rows_per_bin == {"0": 1, "3": 3}
    assert m.inputs[0].path == "/data/corpus.jsonl" and m.counts["instances"] == 4
    assert m.to_dict() == WRITTEN_BEFORE
    assert json.loads(m.to_json()) == WRITTEN_BEFORE


def test_keys_a_newer_writer_adds_are_kept():
    m = Manifest.from_json(json.dumps({**WRITTEN_BEFORE, "sampling": "temperature"}))
    assert m.extra == {"sampling": "temperature"} and m.to_dict()["sampling"] == "temperature"


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    (json.dumps({**WRITTEN_BEFORE, "schema_version": 9}), "schema_version 9"),
    (json.dumps({k: v for k, v in WRITTEN_BEFORE.items() if k != "shards"}), "missing key 'shards'"),
    (json.dumps({**WRITTEN_BEFORE, "shards": [{"file": "x"}]}), "malformed"),
])
def test_an_unfit_manifest_is_a_one_line_error_naming_it(text, message):
    with pytest.raises(InputError, match=message) as e:
        Manifest.from_json(text, "out/manifest.json")
    assert str(e.value).startswith("out/manifest.json") and "\n" not in str(e.value)
