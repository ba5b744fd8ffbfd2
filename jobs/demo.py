"""`make demo` (= `python -m jobs.demo`): the whole workflow end to end on embedded defaults.

Writes the demo's data (the pinned Wikipedia lead sections and topic-classification splits
of them) under `demo-output/data/`, runs `jobs/workflows/demo.yaml` on a local Ray instance
with MLflow in `demo-output/mlflow.db`, and prints what it did and how to open the MLflow UI.
`make demo-zh` (= `python -m jobs.demo --zh`) does the same for Chinese: People's Daily,
the bert-base-chinese vocab and the review sentiment splits under `demo-output/data/zh/`,
then `jobs/workflows/chinese.yaml`. Other arguments are `--set`-style KEY=VALUE overrides.
Rerunning it skips the stages already done.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from jobs.assets import fetch, wiki_jsonl, wiki_topics
from jobs.workflow import load, run, ui_hint

WORKFLOWS = Path(__file__).parent / "workflows"
WORKFLOW = WORKFLOWS / "demo.yaml"
DATA = Path("demo-output") / "data"


def _copy(src: Path, dest: Path) -> None:
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)


def english_data() -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    _copy(wiki_jsonl(), DATA / "wiki.jsonl")
    wiki_topics(DATA)
    return WORKFLOW


def chinese_data() -> Path:
    """People's Daily JSONL, the bert-base-chinese vocab.txt and the sentiment splits."""
    from jobs.assets.zh import peoples_daily_jsonl, sentiment_splits
    zh = DATA / "zh"
    zh.mkdir(parents=True, exist_ok=True)
    _copy(peoples_daily_jsonl(), zh / "peoples-daily.jsonl")
    _copy(fetch("zh-vocab"), zh / "vocab.txt")
    sentiment_splits(zh)
    return WORKFLOWS / "chinese.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    workflow = chinese_data() if "--zh" in argv else english_data()
    summary = run(load(workflow, [a for a in argv if a != "--zh"]))
    print("\n=== bertpipe demo: what ran ===")
    for s in summary["stages"]:
        metrics = s.get("metrics") or s.get("counts") or {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in list(metrics.items())[:6])
        run_id = s.get("run_id") or "-"
        print(f"{s['stage']:<28} {s['status']:<8} run {run_id}  {shown}")
    print(f"\nMLflow parent run: {summary['parent_run_id']} (experiment "
          f"'{summary['workflow']}')")
    print(ui_hint(summary["tracking_uri"]))
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
