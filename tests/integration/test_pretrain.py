"""`bertpipe pretrain` end to end: real shards from `bertpipe prepare`, Ray Train with 2 CPU
workers, DeepSpeed ZeRO 2 and 3 (40 steps each) and ZeRO 1 (phase 2, from ZeRO 3's weights),
checkpoints, restarts and MLflow.

All runs use bert-tiny on the Wikipedia fixture (4096-token vocab, seq 128) and log every
step to MLflow, whose metric histories are what the tests compare.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from jobs.config import load_preset
from jobs.pretrain.config import PretrainConfig
from jobs.pretrain.driver import run
from tests.helpers import planned_digest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STEPS = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, sqlite_tracking):
    work = tmp_path_factory.mktemp("pretrain")
    sqlite_tracking(work)   # its runs' store: work/mlflow.db
    return work


def pretrain(workdir: Path, data: Path | str, run_name: str, **overrides) -> dict:
    values = {**dataclasses.asdict(load_preset(PretrainConfig, "pretrain", "bert-tiny-cpu")),
              "data": str(data), "run_name": run_name, "storage_path": str(workdir / "ray"),
              "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "max_steps": STEPS,
              "batch_size": 32, "warmup_steps": 8, "learning_rate": 2e-3, "log_every": 1,
              "eval_every": 0,
              "eval_samples": 256, "checkpoint_every": 20, "zero_stage": 2,
              "dropout": 0.1,  # not the preset's 0: a restart must replay the dropout masks too
              **overrides}
    return run(PretrainConfig(**values))


def history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    """step -> value; a step logged twice (before and after a restart) keeps its last value."""
    from mlflow import MlflowClient
    points = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return {p.step: p.value for p in sorted(points, key=lambda p: p.timestamp)}


@pytest.fixture(scope="module")
def dynamic_shards(workdir, wiki_jsonl, wiki_shards):
    """400 Wikipedia sections prepared with dynamic masking (the fixture's vocab): small
    enough that 40 steps run through about three epochs, each with its own masks."""
    from jobs.prepare import prepare
    from pipeline.config import PrepareConfig
    src = workdir / "wiki-400.jsonl"
    src.write_text("\n".join(wiki_jsonl.read_text().splitlines()[:400]) + "\n")
    out = workdir / "dynamic128"
    prepare(PrepareConfig(input=[str(src)], output=str(out), format="jsonl",
                          vocab=str(Path(wiki_shards) / "vocab.txt"), masking="dynamic",
                          num_shards=6, executor="local"))
    return out


@pytest.fixture(scope="module")
def runs(workdir, wiki_shards, wiki_shards_s3, dynamic_shards, ray_local, mlflow_server):
    """The module's runs, each trained once and shared by the tests that read it. Ray Train
    costs ~20 s per run on 2 cores, so tests read runs rather than start their own."""
    cache: dict[str, dict] = {}
    recipes = {
        # dynamic masks (a small corpus: 40 steps go through several epochs, new masks each);
        # the reference for the restarted and resumed runs
        "zero2": dict(zero_stage=2, data=dynamic_shards),
        # the fully tracked run: a real MLflow server, evaluation, registration, keep 1,
        # packed batches (train and eval), system metrics every second; workers read the
        # shards from S3 (credentials reach them through the runtime env)
        "zero3": dict(zero_stage=3, data=wiki_shards_s3, tracking_uri=mlflow_server, eval_every=20,
                      keep_checkpoints=1, register_as="bertpipe-tiny", model_alias="phase1",
                      packing=True, system_metrics_every=1.0),
        # killed after step 25, in a later epoch of dynamic masks, and restarted by Ray
        # (checkpoint at 20). A stopped job rerun by the user resumes through the same
        # checkpoint path: tests/integration/test_faults.py reruns one (run B) and checks its
        # samples, its single MLflow run and the one-line "rerun the same command" advice.
        "failure": dict(data=dynamic_shards, fail_at_step=25, max_failures=1),
    }

    def get(name: str) -> dict:
        if name not in cache:
            recipe = {"data": wiki_shards, **recipes[name]}
            cache[name] = pretrain(workdir, recipe.pop("data"), name, **recipe)
        return cache[name]
    return get


def sqlite_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


@pytest.mark.parametrize("stage", [2, 3])  # ZeRO 1: phase 2 below
def test_mlm_loss_falls_clearly_below_ln_vocab_with_zero_stage(stage, runs, workdir,
                                                               mlflow_server):
    summary = runs(f"zero{stage}")
    uri = mlflow_server if stage == 3 else sqlite_uri(workdir)
    mlm = history(uri, summary["run_id"], "mlm_loss")
    ln_v = math.log(4096)
    assert sorted(mlm) == list(range(1, STEPS + 1))
    assert abs(mlm[1] - ln_v) < 0.1 * ln_v            # starts at chance: ~ln(vocab)
    assert sum(mlm[s] for s in range(STEPS - 4, STEPS + 1)) / 5 < 0.85 * ln_v
    assert summary["metrics"]["step"] == STEPS


def _same_run(a: dict, b: dict, workdir: Path) -> None:
    uri = sqlite_uri(workdir)
    for key in ("loss", "mlm_loss", "nsp_loss"):
        ha, hb = history(uri, a["run_id"], key), history(uri, b["run_id"], key)
        assert sorted(ha) == sorted(hb) == list(range(1, STEPS + 1))
        for step in ha:
            assert hb[step] == pytest.approx(ha[step], rel=1e-5, abs=1e-6), (key, step)
    # the same samples in the same order on every rank, from the first step to the last
    assert a["metrics"]["data_digest"] == b["metrics"]["data_digest"]
    assert a["metrics"]["samples"] == b["metrics"]["samples"] == STEPS * 32


def test_a_restart_in_a_later_epoch_of_dynamic_masks_repeats_the_uninterrupted_run(
        runs, workdir, dynamic_shards):
    from jobs.pretrain.config import PretrainConfig as Cfg
    from pipeline.dataset import open_dataset, split_holdout
    from pipeline.loader import PretrainLoader
    ds = open_dataset(str(dynamic_shards))
    train, _ = split_holdout(ds.shards, 1)
    loader = PretrainLoader(ds, train, Cfg(batch_size=32, num_workers=2).micro_batch(),
                            world_size=2)
    per_epoch = loader.batches_per_epoch(0)
    # 40 steps go through several epochs (new masks each); the kill is past epoch 0
    assert per_epoch < 20 and loader.locate(20)[0] >= 1
    uninterrupted, restarted = runs("zero2"), runs("failure")
    assert restarted["metrics"]["attempts"] == 2 and restarted["metrics"]["resumed_from"] == 20
    _same_run(uninterrupted, restarted, workdir)


def test_a_killed_worker_is_replaced_and_the_run_finishes_at_max_steps(runs, workdir,
                                                                       dynamic_shards):
    summary = runs("failure")
    assert summary["metrics"]["step"] == STEPS
    assert summary["metrics"]["attempts"] == 2          # restarted once ...
    assert summary["metrics"]["resumed_from"] == 20     # ... from the last checkpoint
    assert (workdir / "ray" / "failure" / ".fail-at-step-25.done").exists()
    _same_run(runs("zero2"), summary, workdir)
    # exactly the samples the loaders plan (what the fault tests compare their runs with)
    assert runs("zero2")["metrics"]["data_digest"] == planned_digest(dynamic_shards, STEPS, 32,
                                                                     2)


def test_checkpoints_keep_the_last_k_and_hold_every_ranks_state(runs):
    summary = runs("zero3")
    run_dir = Path(summary["checkpoint"]).parent
    kept = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert kept == ["checkpoint-00000040"]                        # keep_checkpoints: 1
    last = run_dir / kept[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["micro_batches"] == STEPS
    shards = sorted(p.name for p in (last / "deepspeed").glob("*optim_states.pt"))
    assert len(shards) == 2                                         # one per rank
    assert {p.name for p in (last / "hf").iterdir()} >= {"config.json", "model.safetensors",
                                                         "vocab.txt"}


def test_phase2_from_phase1_weights_with_a_fresh_schedule_and_mlflow_unreachable(
        runs, workdir, wiki_shards, capfd):
    from tests.helpers import free_port
    phase1 = runs("zero3")   # its ZeRO-3 checkpoint's weights into a ZeRO-1 run
    phase2 = pretrain(workdir, wiki_shards, "phase2", init_from=phase1["checkpoint"],
                      max_steps=4, warmup_steps=2, checkpoint_every=4, zero_stage=1,
                      tracking_uri=f"http://127.0.0.1:{free_port()}")
    m = phase2["metrics"]
    assert m["step"] == 4 and m["resumed_from"] == 0               # a new run, not a resume
    assert m["learning_rate"] == pytest.approx(2e-3 * 0.5)          # its own 4-step schedule
    assert m["mlm_loss"] < 0.9 * math.log(4096)                     # phase 1's weights, not new
    # the tracking server never answered: a warning, no run id, and training went on
    assert phase2["run_id"] is None
    assert "could not create or find the run" in capfd.readouterr().err


def test_mlflow_server_holds_one_run_with_params_metrics_artifacts_and_the_model(
        runs, mlflow_server, tmp_path):
    import mlflow
    import yaml
    from safetensors.torch import load_file

    from jobs.tracking import client, download_model
    transformers = pytest.importorskip("transformers")

    summary = runs("zero3")
    c = client(mlflow_server)   # tracking and registry both on the server
    exp = c.get_experiment_by_name("bertpipe-pretrain")
    found = c.search_runs([exp.experiment_id], filter_string="tags.`bertpipe.run_name` = 'zero3'")
    assert [r.info.run_id for r in found] == [summary["run_id"]]
    run = found[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["batch_size"] == "32" and params["zero_stage"] == "3"
    assert params["model_config.vocab_size"] == "4096"
    assert params["deepspeed.train_batch_size"] == "32"

    def steps(key):
        return sorted({m.step for m in c.get_metric_history(run.info.run_id, key)})
    for key in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate",
                "grad_norm", "samples_per_s", "tokens_per_s", "padding_fraction",
                "padding_fraction_unpacked"):
        assert steps(key) == list(range(1, STEPS + 1)), key
    assert steps("eval_mlm_accuracy") == steps("eval_nsp_accuracy") == [20, 40]
    assert params["packing"] == "True"  # packed rows pad less than the same batches unpadded
    padding = run.data.metrics
    assert 0 <= padding["padding_fraction"] < padding["padding_fraction_unpacked"] < 1
    assert summary["metrics"]["samples"] == STEPS * 32  # packing keeps 32 instances a step
    assert "system/cpu_utilization_percentage" in run.data.metrics  # rank 0's monitor

    artifacts = {a.path for top in c.list_artifacts(run.info.run_id)
                 for a in c.list_artifacts(run.info.run_id, top.path)}
    assert {"config/pretrain.yaml", "data/manifest.json"} <= artifacts
    config = yaml.safe_load(Path(c.download_artifacts(run.info.run_id, "config/pretrain.yaml",
                                                      str(tmp_path))).read_text())
    assert config["max_steps"] == STEPS and config["zero_stage"] == 3
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name == "wiki128" and json.loads(dataset.profile)["vocab_size"] == 4096

    version = c.get_model_version_by_alias("bertpipe-tiny", "phase1")
    assert version.run_id == run.info.run_id and int(version.version) == summary["version"]

    hf = download_model("models:/bertpipe-tiny@phase1", tmp_path / "dl", mlflow_server)
    hf_model = transformers.AutoModelForPreTraining.from_pretrained(hf)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    out = hf_model(**tokenizer("the history of the city", return_tensors="pt"))
    assert out.prediction_logits.shape[-1] == 4096
    theirs = hf_model.state_dict()
    for name, tensor in load_file(Path(summary["checkpoint"]) / "hf" / "model.safetensors").items():
        assert theirs[name].float().equal(tensor.float()), name
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    vectors = mlflow.pyfunc.load_model("models:/bertpipe-tiny@phase1").predict(["a city"])
    assert vectors.shape == (1, 128)
