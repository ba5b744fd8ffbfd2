"""`make demo` (= `python -m jobs.demo`): the whole workflow end to end on embedded defaults.

Writes the demo's data (the pinned Wikipedia lead sections and topic-classification splits
of them) under `demo-output/data/`, runs `jobs/workflows/demo.yaml` on a local Ray instance
with MLflow in `demo-output/mlflow.db`, and prints what it did and how to open the MLflow UI.
Rerunning it skips the stages already done.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from jobs.assets import wiki_jsonl, wiki_topics
from jobs.workflow import load, run, ui_hint

WORKFLOW = Path(__file__).parent / "workflows" / "demo.yaml"
DATA = Path("demo-output") / "data"


def main(argv: list[str] | None = None) -> int:
    DATA.mkdir(parents=True, exist_ok=True)
    corpus = DATA / "wiki.jsonl"
    if not corpus.exists():
        shutil.copyfile(wiki_jsonl(), corpus)
    wiki_topics(DATA)
    summary = run(load(WORKFLOW, list(argv or [])))
    print("\n=== bertpipe demo: what ran ===")
    for s in summary["stages"]:
        metrics = s.get("metrics") or s.get("counts") or {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in list(metrics.items())[:6])
        run_id = s.get("run_id") or "-"
        print(f"{s['stage']:<28} {s['status']:<8} run {run_id}  {shown}")
    print(f"\nMLflow parent run: {summary['parent_run_id']} (experiment 'demo')")
    print(ui_hint(summary["tracking_uri"]))
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
