"""The workflow end to end on a tiny budget, its idempotence, and its runs in the MLflow UI
opened in a real browser (Debian's Chromium driven by Playwright)."""
import shutil
from pathlib import Path

import pytest
import yaml

from jobs.assets import wiki_topics
from jobs.config import ConfigError
from jobs.workflow import load, run
from jobs.workflow_status import status

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _workflow(tmp_path, wiki_jsonl, tracking_uri, label_column="label") -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    lines = wiki_jsonl.read_text().splitlines()[:600]
    (data / "wiki.jsonl").write_text("\n".join(lines) + "\n")
    splits = wiki_topics(data, (240, 80, 80))
    wf = {
        "name": "wf-test", "storage": str(tmp_path / "store"), "tracking_uri": tracking_uri,
        "prepare": {"input": [str(data / "wiki.jsonl")], "format": "jsonl", "vocab_size": 2000,
                    "max_seq_length": 64, "dupe_factor": 1, "num_shards": 4},
        "pretrain": {"preset": "pretrain-bert-tiny-cpu", "max_steps": 6, "batch_size": 16,
                     "warmup_steps": 2, "log_every": 2, "eval_every": 0, "eval_samples": 64,
                     "checkpoint_every": 6, "max_seq_length": 64},
        "finetune": [{"task": "classification", "train": str(splits["train"]),
                      "validation": str(splits["dev"]), "text_column": "text",
                      "label_column": label_column, "epochs": 1, "batch_size": 16,
                      "learning_rate": 1e-3, "max_seq_length": 64,
                      "baseline": "scratch", "seeds": 2,
                      "num_workers": 0}],  # in-process fits; test_baseline runs them on Ray
        "evaluate": [{"task": "classification", "input": str(splits["test"]),
                      "text_column": "text", "label_column": "label"}],
        "probe": [{"train": str(splits["train"]), "validation": str(splits["dev"]),
                   "test": str(splits["test"]), "max_seq_length": 64, "baseline": "scratch",
                   "seeds": 2}],
    }
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(wf))
    return path


@pytest.mark.timeout(900)
def test_workflow_runs_once_skips_done_stages_and_links_runs_in_mlflow(
        ray_local, mlflow_server, wiki_jsonl, tmp_path):
    from mlflow import MlflowClient
    # A workflow that crashes at fine-tuning (wrong label column) ...
    broken = _workflow(tmp_path, wiki_jsonl, mlflow_server, label_column="no_such_column")
    assert {s["status"] for s in status(load(broken))["stages"]} == {"to run"}
    with pytest.raises(Exception, match="no_such_column"):
        run(load(broken))
    markers = sorted(p.name.split("-")[0] for p in (tmp_path / "store/workflows/wf-test").iterdir())
    assert markers == ["prepare", "pretrain"]
    # ... `workflow status` of the fixed file: the first two stages done, the rest to run ...
    fixed = _workflow(tmp_path, wiki_jsonl, mlflow_server)
    planned = {s["stage"]: s["status"] for s in status(load(fixed))["stages"]}
    assert planned == {"prepare": "done", "pretrain-phase1": "done",
                       "finetune-0-classification": "to run", "evaluate-0": "to run",
                       "probe-0": "to run"}
    # ... rerun fixed: prepare and pretraining are skipped, the rest runs.
    summary = run(load(fixed))
    ran = {s["stage"]: s["status"] for s in summary["stages"]}
    assert ran == {"prepare": "skipped", "pretrain-phase1": "skipped",
                   "finetune-0-classification": "ran", "evaluate-0": "ran", "probe-0": "ran"}
    after = status(load(fixed))
    assert [s["stage"] for s in after["stages"]] == list(ran) and after["done"] == 5
    assert after["stages"][1]["model_uri"] == summary["stages"][1]["model_uri"]
    # the evaluate stage scored every seed's model of both sides on the test file
    evaluated = summary["stages"][-2]
    m = evaluated["metrics"]
    assert 0.0 <= m["accuracy"] <= 1.0 and evaluated["seeds"] == [42, 43]
    pre = [evaluated["pretrained"][s]["accuracy"] for s in ("42", "43")]
    scr = [evaluated["scratch"][s]["accuracy"] for s in ("42", "43")]
    assert m["accuracy"] == pytest.approx(sum(pre) / 2)
    assert m["scratch_accuracy"] == pytest.approx(sum(scr) / 2)
    assert m["gain_over_scratch"] == pytest.approx((pre[0] - scr[0] + pre[1] - scr[1]) / 2)
    assert len(evaluated["runs"]) == 4
    # Everything done: a third run does nothing.
    again = run(load(fixed))
    assert {s["status"] for s in again["stages"]} == {"skipped"}
    assert again["parent_run_id"] == summary["parent_run_id"]

    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("wf-test")
    runs = c.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == summary["parent_run_id"]]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    jobs = {r.data.tags.get("bertpipe.job") for r in children}
    assert {"pretrain", "finetune", "evaluate"} <= jobs
    pretrain_runs = [r for r in children if r.data.tags.get("bertpipe.job") == "pretrain"]
    assert len(pretrain_runs) == 1  # the skipped rerun made no duplicate
    assert c.get_metric_history(pretrain_runs[0].info.run_id, "loss")
    assert c.get_metric_history(pretrain_runs[0].info.run_id, "unigram_mlm_loss")
    # the baseline is a sibling of the job's fine-tune run; the evaluations nest in a stage run
    finetunes = {r.data.tags.get("bertpipe.init"): r for r in children
                 if r.data.tags.get("bertpipe.job") == "finetune"}
    assert finetunes["scratch"].data.tags["bertpipe.baseline_of"] == \
        finetunes["pretrained"].info.run_id
    evaluations = c.search_runs([exp.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{evaluated['run_id']}'")
    assert len(evaluations) == 4
    # the parent run carries the headline metrics
    headline = c.get_run(summary["parent_run_id"]).data.metrics
    assert headline["evaluate_classification_gain_over_scratch"] == \
        pytest.approx(m["gain_over_scratch"])
    assert {"pretrain_eval_mlm_accuracy", "pretrain_unigram_mlm_accuracy",
            "finetune_classification_dev_accuracy", "probe_test_gain_over_scratch"} <= set(headline)
    _check_ui(mlflow_server, exp.experiment_id, pretrain_runs[0])


def _check_ui(uri: str, experiment_id: str, pretrain_run) -> None:
    """The experiment's runs and a metric chart are visible in Chromium; screenshots kept."""
    from playwright.sync_api import expect, sync_playwright
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{uri}/#/experiments/{experiment_id}/runs")
            # the workflow's parent run heads the table (stage runs are nested under it)
            expect(page.get_by_text("workflow-wf-test").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Training runs").first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "mlflow-runs.png"))
            page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{pretrain_run.info.run_id}"
                      f"/model-metrics")
            expect(page.get_by_text(pretrain_run.info.run_name).first).to_be_visible(
                timeout=60_000)
            chart = page.locator("canvas, svg.main-svg, .js-plotly-plot").first
            expect(chart).to_be_visible(timeout=60_000)
            page.screenshot(path=str(SCREENSHOTS / "mlflow-metrics.png"))
            expect(page.get_by_text("mlm_loss").first).to_be_visible(timeout=30_000)
        finally:
            browser.close()


def test_workflow_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "wf.yaml"
    bad.write_text("name: x\nprepare: {input: [a]}\npretrian: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'pretrian'"):
        load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml")
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: x\nprepare: {input: [a]}\npretrain: {max_steps: 5}\n")
    assert load(ok, ["pretrain.max_steps=7", "storage=s3://b/p"]).pretrain["max_steps"] == 7
