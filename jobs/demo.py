"""`make demo` (= `python -m jobs.demo`): the whole workflow end to end on embedded defaults.

Writes the demo's data (the pinned Wikipedia lead sections and topic-classification splits
of them) under `demo-output/data/`, runs `jobs/workflows/demo.yaml` on a local Ray instance
with MLflow in `demo-output/mlflow.db`, and prints what it did, whether pretraining helped
(held-out MLM accuracy against the unigram baseline; pretrained vs. from-scratch fine-tuning
on the test split, mean ± std over seeds; the linear probe) and how to open the MLflow UI.
`make demo-zh` (= `python -m jobs.demo --zh`) does the same for Chinese: People's Daily,
the bert-base-chinese vocab and the review sentiment splits under `demo-output/data/zh/`,
then `jobs/workflows/chinese.yaml`. Other arguments are `--set`-style KEY=VALUE overrides.
Rerunning it skips the stages already done.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs.assets import fetch, wiki_jsonl, wiki_topics
from jobs.workflow import load, run, ui_hint
from pipeline.storage import write_file_atomic

WORKFLOWS = Path(__file__).parent / "workflows"
WORKFLOW = WORKFLOWS / "demo.yaml"
DATA = Path("demo-output") / "data"


def _copy(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` whole or not at all (a temp name of this process's own)."""
    if not dest.exists():
        write_file_atomic(str(dest), src.read_bytes())


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
    report(summary)
    print(f"\nMLflow parent run: {summary['parent_run_id']} (experiment "
          f"'{summary['workflow']}')")
    print(ui_hint(summary["tracking_uri"]))
    print(json.dumps(summary, default=str))
    return 0


def report(summary: dict) -> None:
    """Does pretraining help? The pretraining diagnostics, then pretrained vs. scratch."""
    from jobs.workflow import describe
    print("\n=== does pretraining help? ===")
    for s in summary["stages"]:
        m, name = s.get("metrics") or {}, s["stage"]
        if name.startswith("pretrain") and s.get("unigram"):
            u = s["unigram"]
            acc, loss = m.get("eval_mlm_accuracy"), m.get("eval_mlm_loss")
            if acc is not None and loss is not None:
                print(f"{name}: held-out MLM accuracy {acc:.3f} = {acc / u['top1']:.2f}x the "
                      f"unigram top-1 {u['top1']:.3f}; MLM loss {loss:.3f} vs unigram "
                      f"{u['loss']:.3f} nats: context gain {u['loss'] - loss:.3f}")
            if u.get("copy_top1") is not None:
                print(f"{'':<{len(name)}}  (copying the visible 10% of masked tokens alone "
                      f"would score {u['copy_top1']:.3f}, loss {u['copy_loss']:.3f})")
        elif name.startswith("finetune") and "gain_over_scratch" in m:
            metric, seeds = s["metric"], len(s.get("dev") or {}) or 1
            dev = {metric: m[f"dev_{metric}_mean"], f"{metric}_std": m[f"dev_{metric}_std"],
                   f"scratch_{metric}": m[f"scratch_dev_{metric}"],
                   f"scratch_{metric}_std": m[f"scratch_dev_{metric}_std"],
                   "gain_over_scratch": m["gain_over_scratch"],
                   "gain_over_scratch_std": m["gain_over_scratch_std"]}
            print(f"{name}: dev {metric} (each side at its best setting), "
                  + describe(dev, metric, seeds))
        elif name.startswith("evaluate") and s.get("metric") in m:
            metric = s["metric"]
            print(f"{name}: TEST {metric} over {len(s.get('seeds') or [0])} seed(s), "
                  + describe(m, metric, len(s.get("seeds") or [0])))
        elif name.startswith("probe") and "pretrained_test_accuracy" in m:
            seeds = len(s.get("scratch") or {}) or 1
            text = f"{name}: linear probe TEST accuracy pretrained {m['pretrained_test_accuracy']:.4f}"
            if "scratch_test_accuracy_mean" in m:
                text += (f", random init {m['scratch_test_accuracy_mean']:.4f} ± "
                         f"{m['scratch_test_accuracy_std']:.4f} (n={seeds}), gain "
                         f"{m['test_gain_over_scratch']:.4f}")
            print(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
