"""Every command in infra/ is a real invocation, and every file there parses, names real
repo files, placeholder buckets and no credentials."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.unit.infra.scan import (
    BUCKET,
    CHECKED,
    COMMANDS,
    COMPOSE,
    INFRA,
    LAUNCHER,
    README,
    REPO,
    WORKFLOWS,
    check_command,
    config_files,
    is_checked,
    k8s_objects,
    load,
    rel,
)


@pytest.mark.parametrize("cmd", CHECKED, ids=[f"{c.where}: {c}"[:150] for c in CHECKED])
def test_every_command_in_infra_is_a_real_invocation(cmd):
    check_command(cmd)


def test_the_command_scan_finds_every_job_and_service_command():
    """Guards the scan itself: these must be found, or the test above checks too little."""
    wheres = {c.where.split(":")[0].split(" ")[0] for c in CHECKED}
    runners = {rel(p) for p, o in k8s_objects() if o["kind"] in ("RayJob", "RayCronJob", "CronJob")}
    assert runners and runners <= wheres
    assert {rel(LAUNCHER), rel(COMPOSE), rel(README), "infra/mlflow/k8s/mlflow.yaml"} <= wheres
    # a mention of a job that is not a command of a known form is a mistake, not a pass
    for c in COMMANDS:
        text = " ".join(c.argv)
        if re.search(r"-m\s+jobs\b|(^|/)bertpipe\s", text) and not is_checked(c):
            pytest.fail(f"{c.where}: `{c}` names a job but is not a checked command form")


# -- every file -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", config_files(), ids=rel)
def test_every_infra_config_file_parses(path):
    docs = load(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{rel(path)} holds no mapping"


def scanned_texts() -> list[tuple[Path, str]]:
    files = [p for p in INFRA.rglob("*") if p.is_file()] + sorted(WORKFLOWS.glob("*.yaml"))
    return [(p, p.read_text()) for p in sorted(files)]


def test_repo_files_named_in_infra_exist():
    pattern = re.compile(r"(?<![\w/.~-])((?:jobs|infra|pipeline|model|tests)/[\w./-]*\w"
                         r"\.(?:ya?ml|json|py|md|txt)|infra/docker/Dockerfile)\b")
    for path, text in scanned_texts():
        for name in pattern.findall(text):
            assert (REPO / name).exists(), f"{rel(path)} names {name}, which does not exist"


def test_data_paths_are_placeholders_never_real_buckets():
    for path, text in scanned_texts():
        if path == COMPOSE:
            continue  # the local MinIO's own bucket, created by minio-init
        for uri in re.findall(r"s3://[^\s\"'`,)\]]*", text):
            assert uri == BUCKET or uri.startswith(BUCKET + "/"), (
                f"{rel(path)}: {uri} is not under the placeholder {BUCKET}/")


def test_no_credentials_are_written_into_any_file():
    for path, text in scanned_texts():
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{rel(path)} holds an AWS key id"
        assert "PRIVATE KEY" not in text, f"{rel(path)} holds a private key"
        for url in re.findall(r"\w+://[^\s\"'`]+", text):
            assert urlparse(url).password is None, f"{rel(path)}: password in URL {url}"
