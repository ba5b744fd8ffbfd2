"""The demo copies its data files whole or not at all, also when two demos start at once."""
from __future__ import annotations

import os
import threading

from jobs.demo import _copy


def test_copies_started_at_once_each_leave_the_whole_file_and_no_temp_file(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_bytes(os.urandom(8 << 20))
    out = tmp_path / "data"
    out.mkdir()
    dest = out / "wiki.jsonl"
    start, errors = threading.Barrier(4), []

    def copy():
        start.wait()
        try:
            _copy(src, dest)
        except Exception as e:  # the assertion below names it
            errors.append(repr(e))
    threads = [threading.Thread(target=copy) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["wiki.jsonl"]


def test_a_file_already_there_is_kept(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_text("new")
    dest.write_text("old")
    _copy(src, dest)
    assert dest.read_text() == "old"
