"""The reference MLflow deployment: PostgreSQL + S3, lean, its own host names, auth config,
local compose on loopback."""
from __future__ import annotations

import configparser
from urllib.parse import urlparse

from tests.unit.infra.scan import (
    BUCKET,
    COMPOSE,
    WORKFLOWS,
    Command,
    check_command,
    compose_commands,
    containers,
    env_value,
    k8s_commands,
    k8s_objects,
    load,
    name_of,
    objects,
)


def mlflow_server() -> tuple[dict, dict, dict]:
    """(Deployment, its mlflow container, the parsed `mlflow server` options)."""
    (path, deployment), = [(p, o) for p, o in objects("Deployment")
                           if o["metadata"]["name"] == "mlflow"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = [*container["command"], *container["args"]]
    return deployment, container, check_command(Command(name_of(path, deployment), tuple(argv)))


def test_mlflow_reference_server_stores_runs_in_postgres_and_artifacts_in_s3():
    deployment, container, opts = mlflow_server()
    backend = urlparse(opts["backend_store_uri"])
    assert backend.scheme == "postgresql" and backend.password is None
    (_, pg), = objects("StatefulSet")
    namespace = deployment["metadata"]["namespace"]
    assert backend.hostname == f"{pg['spec']['serviceName']}.{namespace}.svc"
    assert pg["spec"]["volumeClaimTemplates"], "PostgreSQL needs a persistent volume"
    (pg_container,) = pg["spec"]["template"]["spec"]["containers"]
    assert "secretKeyRef" in env_value(pg_container, "POSTGRES_PASSWORD")
    assert "secretKeyRef" in env_value(container, "PGPASSWORD"), "libpq reads the password here"
    assert opts["artifacts_destination"].startswith(BUCKET + "/")


def test_mlflow_server_is_lean_and_accepts_only_its_own_host_names():
    _, container, opts = mlflow_server()
    assert env_value(container, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "false"
    # 0.0.0.0 only inside the pod: its Service is ClusterIP (checked above)
    assert opts["host"] == "0.0.0.0"
    allowed = opts["allowed_hosts"].split(",")
    (_, svc), = [(p, o) for p, o in objects("Service") if o["metadata"]["name"] == "mlflow"]
    port = svc["spec"]["ports"][0]["port"]
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{port}"
    assert host in allowed and f"localhost:{port}" in allowed  # in-cluster and port-forward
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"  # exempt from the Host check


def test_every_tracking_uri_points_at_the_mlflow_service():
    (_, svc), = [(p, o) for p, o in objects("Service") if o["metadata"]["name"] == "mlflow"]
    uri = (f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:"
           f"{svc['spec']['ports'][0]['port']}")
    used = [str(env_value(c, "MLFLOW_TRACKING_URI")) for _, o in k8s_objects()
            for c in containers(o) if env_value(c, "MLFLOW_TRACKING_URI")]
    used += [c.argv[c.argv.index("--tracking-uri") + 1] for c in k8s_commands()
             if "--tracking-uri" in c.argv]
    used += [load(p)[0]["tracking_uri"] for p in WORKFLOWS.glob("*.yaml")  # cluster ones:
             if not str(load(p)[0].get("tracking_uri", "sqlite:")).startswith("sqlite:")]
    assert used and set(used) == {uri}


def test_mlflow_basic_auth_config_has_mlflows_keys_and_no_password():
    # read as mlflow.server.auth.config.read_auth_config does (importing it needs Flask-WTF,
    # which the image has and the test environment need not)
    (_, config_map), = objects("ConfigMap")
    ini = configparser.ConfigParser()
    ini.read_string(config_map["data"]["basic_auth.ini"])
    assert ini["mlflow"]["default_permission"] in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
    database = urlparse(ini["mlflow"]["database_uri"])
    assert database.scheme == "postgresql" and database.password is None
    _, container, opts = mlflow_server()
    assert opts["app_name"] == "basic-auth"
    assert env_value(container, "MLFLOW_AUTH_CONFIG_PATH").startswith(
        container["volumeMounts"][0]["mountPath"])
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert "secretKeyRef" in env_value(container, name)


def _auth_ini(text: str) -> configparser.ConfigParser:
    ini = configparser.ConfigParser()
    ini.read_string(text)
    assert ini["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS"), "least privilege"
    assert ini["mlflow"]["authorization_function"] == \
        "mlflow.server.auth:authenticate_request_basic_auth"
    database = urlparse(ini["mlflow"]["database_uri"])
    assert database.scheme == "postgresql" and database.password is None
    assert "admin_password" not in ini["mlflow"]
    return ini


def test_every_reference_mlflow_server_turns_basic_auth_on():
    # Kubernetes: the Deployment's server and its ConfigMap
    (_, config_map), = objects("ConfigMap")
    _auth_ini(config_map["data"]["basic_auth.ini"])
    _, container, opts = mlflow_server()
    assert opts["app_name"] == "basic-auth"
    assert "secretKeyRef" in env_value(container, "MLFLOW_AUTH_ADMIN_PASSWORD")
    # compose: the same server options, the ini mounted from the repository
    service = load(COMPOSE)[0]["services"]["mlflow"]
    (cmd,) = [c for c in compose_commands() if c.where.endswith("service mlflow")]
    assert check_command(cmd)["app_name"] == "basic-auth"
    env = service["environment"]
    mounts = {m.split(":")[1]: COMPOSE.parent / m.split(":")[0] for m in service["volumes"]}
    ini = mounts[env["MLFLOW_AUTH_CONFIG_PATH"]]
    assert ini.is_file()
    assert urlparse(_auth_ini(ini.read_text())["mlflow"]["database_uri"]).hostname == "postgres"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${") and ":?" in \
        env["MLFLOW_AUTH_ADMIN_PASSWORD"], "the admin password comes from the environment"
    assert "Flask-WTF" in service["build"]["dockerfile_inline"]   # what the auth app imports


def test_local_compose_publishes_ports_on_loopback_only():
    services = load(COMPOSE)[0]["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    (cmd,) = [c for c in compose_commands() if c.where.endswith("service mlflow")]
    opts = check_command(cmd)
    assert opts["allowed_hosts"] and opts["backend_store_uri"].startswith("postgresql://")
