"""jobs.tracking against a real MLflow server on 127.0.0.1 (no Ray): one run per run name,
credentials never logged, metrics that survive a server outage."""
from __future__ import annotations

import time

import pytest

from jobs.tracking import MetricLogger, Tracker, client, get_or_create_run
from tests.helpers import lean_server

pytestmark = [pytest.mark.slow, pytest.mark.beside, pytest.mark.timeout(300)]


def test_the_same_run_name_finds_the_same_run_never_a_duplicate(mlflow_server):
    c = client(mlflow_server)
    first, created = get_or_create_run(c, "tracking-test", "same-name")
    again, created_again = get_or_create_run(c, "tracking-test", "same-name")
    other, _ = get_or_create_run(c, "tracking-test", "other-name")
    assert created and not created_again
    assert again == first != other


def test_a_resumed_run_keeps_its_params_and_records_changed_ones_as_tags(mlflow_server):
    manifest = {"counts": {"instances": 3}, "shards": [], "vocab": {"size": 10}}
    first = Tracker(mlflow_server, "tracking-test", "params-run")
    run_id = first.open({"max_steps": 10, "batch_size": 32}, "max_steps: 10\n", "pretrain.yaml",
                        manifest=manifest, data_path="/d")
    again = Tracker(mlflow_server, "tracking-test", "params-run")
    assert again.open({"max_steps": 20, "batch_size": 32}, "max_steps: 20\n", "pretrain.yaml",
                      manifest=manifest, data_path="/d") == run_id
    assert again.resumed
    run = client(mlflow_server).get_run(run_id)
    assert run.data.params == {"max_steps": "10", "batch_size": "32"}
    assert run.data.tags["bertpipe.changed.max_steps"] == "20"
    assert len(run.inputs.dataset_inputs) == 1


def test_metrics_logged_while_the_server_is_down_arrive_when_it_is_back(tmp_path, capfd):
    with lean_server(tmp_path / "srv") as uri:
        run_id, _ = get_or_create_run(client(uri), "outage", "outage-run")
        logger = MetricLogger(uri, run_id, retry_s=0.5)
        for step in range(1, 4):
            logger.log({"loss": 10.0 - step}, step)
        deadline = time.time() + 30
        while logger.pending() and time.time() < deadline:
            time.sleep(0.1)
        assert logger.pending() == 0
    port = int(uri.rsplit(":", 1)[1])
    started = time.perf_counter()
    for step in range(4, 8):          # server down: log() must return at once
        logger.log({"loss": 10.0 - step}, step)
    assert time.perf_counter() - started < 1.0
    deadline = time.time() + 30
    while "unreachable" not in capfd.readouterr().err and time.time() < deadline:
        time.sleep(0.2)
    assert logger.pending() == 4
    with lean_server(tmp_path / "srv", port=port) as uri:   # same store, same address
        deadline = time.time() + 30
        while logger.pending() and time.time() < deadline:
            time.sleep(0.2)
        logger.close()
        steps = sorted(m.step for m in client(uri).get_metric_history(run_id, "loss"))
    assert steps == list(range(1, 8))
    assert logger.pending() == 0


def test_logging_the_same_weights_twice_registers_one_version(mlflow_server, tmp_path):
    import model.hf
    from model import BertConfig, BertForPreTraining
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]
    net = BertForPreTraining(BertConfig.from_preset("bert-tiny", vocab_size=64))
    hf = model.hf.save(net, tmp_path / "hf", vocab=vocab)
    manifest = {"counts": {}, "shards": [], "vocab": {"size": 64}}
    infos = []
    for _ in range(2):   # a rerun of a finished run exports the same final checkpoint again
        tracker = Tracker(mlflow_server, "tracking-test", "export-run")
        tracker.open({"max_steps": 1}, "max_steps: 1\n", manifest=manifest, data_path="/d")
        infos.append(tracker.log_model(hf, "export-test", "current"))
        tracker.finish()
    assert infos[0] == infos[1] and infos[0]["version"] == 1
    assert infos[0]["registered_uri"] == "models:/export-test@current"
    assert len(client(mlflow_server).search_model_versions("name = 'export-test'")) == 1
