"""The asset cache when several processes fill it at once (`make test` runs two pytest
processes; two jobs on a node can start together): every one gets the whole, verified files
and nothing half-written stays behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BUILD = "from jobs.assets import wiki_jsonl; print(wiki_jsonl(limit=40))"


def test_processes_filling_an_empty_cache_at_once_all_get_the_whole_files(tmp_path):
    env = {**os.environ, "BERTPIPE_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    done = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [code for code, _, _ in done] == [0, 0, 0], [err[-2000:] for _, _, err in done]
    paths = {out.strip() for _, out, _ in done}
    assert len(paths) == 1
    rows = [json.loads(line) for line in Path(paths.pop()).read_text().splitlines()]
    assert len(rows) == 40 and all(r["text"] and r["title"] for r in rows)
    unpacked = tmp_path / "wiki-en-0.0.7" / "summaries_en-us.json"
    assert len(json.loads(unpacked.read_text())) > 10_000
    # no staging folder or temporary file of any process is left in the cache
    assert [p.name for p in tmp_path.iterdir()] == ["wiki-en-0.0.7"]
    assert sorted(p.name for p in unpacked.parent.iterdir()) == ["summaries_en-us.json",
                                                                 "wiki-en-40.jsonl"]
