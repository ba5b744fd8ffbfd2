"""jobs.tracking without a server: what may be logged as params, where local runs keep files."""
from jobs.tracking import default_tracking_uri, local_artifact_root, safe_params
from jobs.tracking.runs import flatten


def test_params_never_carry_credentials():
    params = safe_params({"learning_rate": 1e-4, "aws_secret_access_key": "x",
                          "env": {"AWS_ACCESS_KEY_ID": "x", "MLFLOW_TRACKING_TOKEN": "x",
                                  "db_password": "x", "api_key": "x", "hf_token": "x",
                                  "auth": "x"},
                          "tokenizer": "wordpiece", "num_tokens": 3})
    assert params == {"learning_rate": "0.0001", "tokenizer": "wordpiece", "num_tokens": "3"}


def test_nested_config_flattens_to_dotted_keys():
    assert flatten({"a": {"b": 1, "c": None}, "d": [1, 2]}) == {"a.b": "1", "a.c": "", "d": "[1, 2]"}


def test_the_default_store_is_an_absolute_sqlite_file_with_artifacts_beside_it(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert local_artifact_root(uri) == (tmp_path / "mlruns").as_uri()
    assert local_artifact_root("http://127.0.0.1:5000") is None


def test_the_default_store_follows_mlflow_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri() == "http://127.0.0.1:5000"
