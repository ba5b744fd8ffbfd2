"""Where starting weights come from: HF folders, checkpoints (their hf/), MLflow URIs."""
from __future__ import annotations

import pytest

from jobs.train.sources import resolve_model
from pipeline.errors import InputError


def test_init_from_a_checkpoint_folder_uses_its_hf_export(tmp_path, minilm_dir):
    import shutil
    shutil.copytree(minilm_dir, tmp_path / "checkpoint-00000010" / "hf")
    found = resolve_model(str(tmp_path / "checkpoint-00000010"), None, tmp_path / "x")
    assert found.hf_dir == tmp_path / "checkpoint-00000010" / "hf"
    with pytest.raises(InputError, match="expected a HF BERT folder"):
        resolve_model(str(tmp_path), None, tmp_path / "y", flag="--init-from")


def test_a_folder_without_vocab_is_refused_where_the_vocab_must_come_with_it(tmp_path, minilm_dir):
    import shutil
    shutil.copytree(minilm_dir, tmp_path / "m")
    (tmp_path / "m" / "vocab.txt").unlink()
    with pytest.raises(InputError, match="no vocab.txt"):
        resolve_model(str(tmp_path / "m"), None)
    assert resolve_model(str(tmp_path / "m"), None, need_vocab=False).hf_dir == tmp_path / "m"


def test_lineage_of_a_logged_models_own_uri_is_its_run(tmp_path):
    """MLflow 3's log_model returns `models:/m-ID`; the evaluate stage scores such URIs."""
    from mlflow import MlflowClient

    from jobs.train.sources import lineage
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("e")
    run = c.create_run(exp)
    model = c.create_logged_model(exp, name="model", source_run_id=run.info.run_id)
    assert model.model_id.startswith("m-")
    assert lineage(f"models:/{model.model_id}", uri) == (run.info.run_id, None)
    assert lineage(f"runs:/{run.info.run_id}/model", uri) == (run.info.run_id, None)
    assert lineage("some/folder", uri) == (None, None)


def test_a_model_from_mlflow_downloads_without_a_progress_bar(tmp_path, minilm_dir, capfd,
                                                              monkeypatch):
    """The jobs' output has their own lines, not a bar per download (MLFLOW_CLIENT_ENV)."""
    from jobs.tracking import Tracker
    monkeypatch.chdir(tmp_path)   # the SQLite store's artifacts land under the working dir
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "e", "r")
    tracker.open({})
    logged = tracker.log_model(minilm_dir, None, "best")
    tracker.finish()
    capfd.readouterr()
    found = resolve_model(logged["model_uri"], uri, tmp_path / "got")
    assert (found.hf_dir / "config.json").is_file()
    captured = capfd.readouterr()
    assert "Downloading artifacts" not in captured.err + captured.out
