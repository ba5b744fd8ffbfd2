"""`bertpipe workflow status FILE`: which stages of a workflow are done for their config
(with the results they recorded) and which `bertpipe workflow run` would start, without
running anything, starting Ray or opening an MLflow run (`jobs.workflow.Runner` in plan
mode). A stage after one not done is to run: its config depends on that stage's result.
"""
from __future__ import annotations

import json
import sys

from jobs.workflow import Pending, Runner, Workflow, log, run_stages


def stage_names(wf: Workflow) -> list[str]:
    """Every stage of the workflow, in the order `run` takes them."""
    names = ["prepare"] + (["pretrain-phase1"] if wf.pretrain else [])
    if wf.pretrain_phase2:
        names += ["prepare-phase2", "pretrain-phase2"]
    names += [f"finetune-{i}-{v.get('task', 'task')}" for i, v in enumerate(wf.finetune)]
    names += [f"evaluate-{i}" for i in range(len(wf.evaluate))]
    return names + [f"probe-{i}" for i in range(len(wf.probe))]


def status(wf: Workflow) -> dict:
    """{"stages": [{"stage", "status": "done" (+ its recorded result) or "to run"}, ...],
    "done", "total", ...} in run order."""
    planner = Runner(wf, plan=True)
    try:
        run_stages(wf, planner)
    except Pending:
        pass
    seen = {s["stage"] for s in planner.stages}
    stages = planner.stages + [{"stage": n, "status": "to run"}
                               for n in stage_names(wf) if n not in seen]
    return {"workflow": wf.name, "storage": wf.storage, "stages": stages,
            "done": sum(s["status"] == "done" for s in stages), "total": len(stages)}


def stage_line(stage: dict) -> str:
    if stage["status"] != "done":
        return f"  {stage['stage']:<28} to run"
    where = stage.get("output") or stage.get("model_uri") or stage.get("run_id") or ""
    took = f", {stage['seconds']:.0f}s" if stage.get("seconds") is not None else ""
    return f"  {stage['stage']:<28} done{took}  {where}".rstrip()


def print_status(wf: Workflow) -> int:
    """A line per stage (stderr), then the report as JSON (stdout); exit code 0."""
    report = status(wf)
    log(f"{wf.name}: {report['done']} of {report['total']} stages done for this config "
        f"(storage {wf.storage})")
    for stage in report["stages"]:
        print(stage_line(stage), file=sys.stderr)
    print(json.dumps(report, default=str))
    return 0
