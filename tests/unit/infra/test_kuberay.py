"""The Kubernetes and KubeRay objects: complete specs, token auth on, a RayJob per stage,
schedules, secrets only from secret references, services inside the cluster."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.unit.infra.scan import (
    COMPOSE,
    SECRET_NAME,
    STAGES,
    after_dashes,
    check_job,
    containers,
    env_value,
    gpus,
    job_of,
    k8s_commands,
    k8s_objects,
    load,
    name_of,
    objects,
    parse_click,
    pinned,
    ray_cluster_specs,
    rel,
    simple_commands,
)


def test_every_kubernetes_object_has_api_version_kind_and_name():
    found = k8s_objects()
    assert found
    for path, obj in found:
        assert obj.get("apiVersion") and obj.get("kind"), f"{rel(path)}: no apiVersion/kind"
        assert obj.get("metadata", {}).get("name"), f"{rel(path)}: {obj['kind']} has no name"
    kinds = {(o["apiVersion"], o["kind"]) for _, o in found}
    assert {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayCronJob"),
            ("batch/v1", "CronJob")} <= kinds


@pytest.mark.parametrize("where,spec", ray_cluster_specs(), ids=[w for w, _ in ray_cluster_specs()])
def test_every_ray_cluster_spec_is_complete(where, spec):
    from ray.scripts.scripts import start
    assert str(spec.get("rayVersion")) == pinned("ray"), (
        f"{where}: rayVersion must be the Ray that pyproject.toml pins ({pinned('ray')})")
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker groups"
    for group in [head, *groups]:
        assert isinstance(group.get("rayStartParams"), dict), f"{where}: no rayStartParams"
        # KubeRay passes them to `ray start` as --KEY=VALUE: they must be real options
        parse_click(start, "ray start", [f"--{k}={v}" for k, v in group["rayStartParams"].items()],
                    where)
        pods = group["template"]["spec"]["containers"]
        assert pods and all(c.get("image") for c in pods), f"{where}: a container has no image"
    names = [g.get("groupName") for g in groups]
    assert all(names) and len(set(names)) == len(names), f"{where}: groupNames must be unique"
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (
            f"{where}: group {g['groupName']} needs minReplicas <= replicas <= maxReplicas")
        for c in g["template"]["spec"]["containers"]:
            requests = c.get("resources", {}).get("requests", {})
            if "nvidia.com/gpu" in requests:  # Kubernetes wants requests == limits for GPUs
                assert int(requests["nvidia.com/gpu"]) == gpus(c), f"{where}: GPU request != limit"


def test_the_long_lived_raycluster_has_an_autoscaled_gpu_worker_group():
    (path, cluster), = objects("RayCluster")
    spec = cluster["spec"]
    assert spec.get("enableInTreeAutoscaling") is True
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(gpus(c) for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "the RayCluster has no worker group with nvidia.com/gpu limits"
    assert all(g["maxReplicas"] > g["minReplicas"] for g in gpu_groups)
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", (
        "the head runs drivers only: num-cpus 0 keeps tasks and Train workers off it")


def test_every_ray_cluster_keeps_token_auth_on():
    for where, spec in ray_cluster_specs():
        if spec.get("authOptions", {}).get("mode") == "token":
            continue  # KubeRay generates the token and sets it on every pod and the submitter
        secrets = set()
        for c in containers(spec):
            assert env_value(c, "RAY_AUTH_MODE") == "token", f"{where}: {c['name']} auth off"
            token = env_value(c, "RAY_AUTH_TOKEN")
            assert token and "secretKeyRef" in token, f"{where}: {c['name']} has no token ref"
            secrets.add(json.dumps(token["secretKeyRef"], sort_keys=True))
        assert len(secrets) == 1, f"{where}: all Ray pods must share one token Secret"


def test_rayjobs_have_an_entrypoint_and_exactly_one_cluster():
    cluster_names = {o["metadata"]["name"] for _, o in objects("RayCluster")}
    for path, job in objects("RayJob"):
        where, spec = name_of(path, job), job["spec"]
        assert spec.get("entrypoint", "").strip(), f"{where}: no entrypoint"
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), (
            f"{where}: needs exactly one of rayClusterSpec and clusterSelector")
        assert spec.get("submissionMode", "K8sJobMode") in (
            "K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
        if "rayClusterSpec" in spec:
            assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: cluster left running"
            assert int(spec.get("ttlSecondsAfterFinished", -1)) >= 0, f"{where}: no TTL"
        else:
            selected = spec["clusterSelector"].get("ray.io/cluster")
            assert selected in cluster_names, f"{where}: selects unknown RayCluster {selected}"
            # the selected cluster's token reaches the submitter only through its pod template
            (submitter,) = spec["submitterPodTemplate"]["spec"]["containers"]
            assert env_value(submitter, "RAY_AUTH_MODE") == "token"
            assert "secretKeyRef" in (env_value(submitter, "RAY_AUTH_TOKEN") or {})


def test_runtime_envs_are_valid_and_carry_no_credentials():
    from ray.runtime_env import RuntimeEnv
    templates = [(name_of(p, o), o["spec"]) for p, o in objects("RayJob")]
    templates += [(name_of(p, o), o["spec"]["jobTemplate"]) for p, o in objects("RayCronJob")]
    for where, spec in templates:
        if "runtimeEnvYAML" not in spec:
            continue
        env = yaml.safe_load(spec["runtimeEnvYAML"])
        RuntimeEnv(**env)  # Ray's own validation of the keys
        for key in env.get("env_vars", {}):
            assert not SECRET_NAME.search(key), (
                f"{where}: {key} in runtimeEnvYAML is visible in the dashboard; use a Secret")


def rayjob_invocations() -> dict[str, list[tuple[str, list[str]]]]:
    """RayJob/RayCronJob name -> the (module, args) of the jobs its entrypoint runs."""
    out: dict[str, list] = {}
    for cmd in k8s_commands():
        if "entrypoint" in cmd.where:
            job = job_of(list(cmd.argv))
            if job:
                out.setdefault(cmd.where.removesuffix(" entrypoint"), []).append(job)
    return out


def test_there_is_a_rayjob_per_stage_and_one_for_the_workflow():
    jobs = [(where, m, a) for where, found in rayjob_invocations().items() for m, a in found
            if ": RayJob " in where]
    assert {m for _, m, _ in jobs} >= STAGES
    presets = {a[a.index("--preset") + 1] for _, m, a in jobs
               if m == "jobs.pretrain" and "--preset" in a}
    assert any("phase1" in p for p in presets) and any("phase2" in p for p in presets)
    phase2 = [a for _, m, a in jobs if m == "jobs.pretrain" and "phase2" in " ".join(a)]
    assert all("--init-from" in a for a in phase2), "phase 2 must start from phase 1's weights"
    for path, job in objects("RayJob"):  # every RayJob runs a job, nothing else
        assert name_of(path, job) in rayjob_invocations(), f"{name_of(path, job)} runs no job"


def test_pretraining_rayjobs_get_a_gpu_per_train_worker():
    for path, job in objects("RayJob"):
        spec, where = job["spec"], name_of(path, job)
        for cmd in simple_commands(spec["entrypoint"], where):
            found = job_of(list(cmd.argv))
            if not found or found[0] != "jobs.pretrain" or "rayClusterSpec" not in spec:
                continue
            cfg = check_job(*found, where)
            available = sum(g["maxReplicas"] * max(gpus(c) for c in g["template"]["spec"]
                                                   ["containers"])
                            for g in spec["rayClusterSpec"]["workerGroupSpecs"])
            assert available >= cfg.num_workers, (
                f"{where}: {cfg.num_workers} Train workers, at most {available} GPUs")


def valid_cron(schedule: str) -> bool:
    return bool(re.fullmatch(r"([\d*/,-]+\s+){4}[\d*/,-]+", schedule.strip()))


def test_raycronjob_schedules_the_workflow_on_its_own_cluster():
    (path, cron), = objects("RayCronJob")
    spec = cron["spec"]
    assert valid_cron(spec["schedule"])
    template = spec["jobTemplate"]
    assert template.get("rayClusterSpec") and template.get("shutdownAfterJobFinishes") is True
    runs = rayjob_invocations()[name_of(path, cron)]
    assert [m for m, _ in runs] == ["jobs.workflow"]


def test_cronjob_fallback_submits_the_workflow_to_the_raycluster_one_run_at_a_time():
    (path, cron), = objects("CronJob")
    (_, cluster), = objects("RayCluster")
    spec = cron["spec"]
    assert valid_cron(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    argv = [*container.get("command", []), *container.get("args", [])]
    module, args = job_of(argv)
    assert module == "jobs.cli" and args[0] == "submit", "the CronJob must run `bertpipe submit`"
    from jobs.submit import build_parser
    ns = build_parser().parse_args(args[1:])
    # KubeRay names the head Service <cluster>-head-svc; 8265 is the Jobs API
    assert ns.address == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert not ns.no_wait, "waiting keeps the Job alive as long as the run: Forbid then works"
    assert job_of(after_dashes(args))[1][:2] == ["workflow", "run"]
    assert env_value(container, "RAY_AUTH_MODE") == "token"


def test_secrets_come_only_from_secret_references():
    assert not objects("Secret"), "Secrets are created out of band (see infra/README.md)"
    for path, obj in k8s_objects():
        for c in containers(obj):
            for entry in c.get("env", []):
                if SECRET_NAME.search(entry["name"]):
                    assert "value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}), (
                        f"{name_of(path, obj)}: {entry['name']} must come from a secretKeyRef")
            for source in c.get("envFrom", []):
                assert set(source) <= {"secretRef", "configMapRef", "prefix"}
    for name, service in load(COMPOSE)[0]["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", str(value)), (
                    f"{rel(COMPOSE)}: {name}.{key} must come from the environment (${{VAR}})")


def test_services_stay_inside_the_cluster_network():
    assert not objects("Ingress"), "nothing is exposed outside the cluster; use port-forward"
    for path, svc in objects("Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", name_of(path, svc)
    for where, spec in ray_cluster_specs():
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", where
