"""The cluster and service configs in infra/ are usable as shipped.

Every file parses; every Kubernetes/KubeRay object and the Ray cluster launcher config carry
the fields their tools need; secrets come only from secret references; services stay inside
their network; and every command in them (RayJob entrypoints, container commands, launcher
commands, the README's examples) is a real `bertpipe NAME` / `python -m jobs.NAME`
invocation: the module exists, its own parser accepts the arguments, the config they
resolve to validates, and the repo files they name exist.

No cluster and no network: PyYAML, argparse, and the tools' own option parsers and schemas
(`ray start`, `ray job submit`, `mlflow server`, Ray's launcher schema, DeepSpeed's ZeRO
config model, Ray's RuntimeEnv, MLflow's auth config reader).
"""
from __future__ import annotations

import configparser
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_DIRS = (INFRA / "kuberay", INFRA / "mlflow" / "k8s")
LAUNCHER = INFRA / "ray" / "cluster-gpu.yaml"
COMPOSE = INFRA / "mlflow" / "compose.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
README = INFRA / "README.md"
WORKFLOWS = REPO / "jobs" / "workflows"
BUCKET = "s3://YOUR-BUCKET"
# env var names that hold credentials: their values must come from secret references
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN(?!IZER)|ACCESS_KEY|CREDENTIAL", re.I)
STAGES = {"jobs.prepare", "jobs.pretrain", "jobs.finetune", "jobs.evaluate", "jobs.workflow"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def config_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


def load(path: Path) -> list:
    text = path.read_text()
    if path.suffix == ".json":
        return [json.loads(text)]
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(package: str) -> str:
    """The version pyproject.toml pins a dependency to (`name[extras]==X`)."""
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", dep)
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package}")


# -- Kubernetes objects ---------------------------------------------------------------------

def k8s_objects() -> list[tuple[Path, dict]]:
    return [(p, doc) for d in K8S_DIRS for p in sorted(d.glob("*.yaml")) for doc in load(p)]


def objects(kind: str) -> list[tuple[Path, dict]]:
    return [(p, o) for p, o in k8s_objects() if o.get("kind") == kind]


def name_of(path: Path, obj: dict) -> str:
    return f"{rel(path)}: {obj['kind']} {obj['metadata']['name']}"


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec: a RayCluster's, a RayJob's own, a RayCronJob template's."""
    out = []
    for path, obj in k8s_objects():
        spec = obj.get("spec", {})
        found = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
                 "RayCronJob": spec.get("jobTemplate", {}).get("rayClusterSpec")}.get(obj["kind"])
        if found:
            out.append((name_of(path, obj), found))
    return out


def pod_specs(node) -> list[dict]:
    """Every pod spec (a mapping with `containers`) anywhere inside `node`."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append(node)
        for value in node.values():
            found += pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            found += pod_specs(value)
    return found


def containers(node) -> list[dict]:
    return [c for pod in pod_specs(node)
            for c in pod["containers"] + pod.get("initContainers", [])]


def gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def env_value(container: dict, name: str):
    for entry in container.get("env", []):
        if entry["name"] == name:
            return entry.get("value", entry.get("valueFrom"))
    return None


# -- commands -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One simple command (no ;, &&, |) found in a config file, with its VAR=value prefix."""
    where: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return shlex.join(self.argv)


def simple_commands(script: str, where: str) -> list[Command]:
    """Split a shell script at newlines, ;, &&, ||, | and strip leading VAR=value words."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                env = []
                while words and re.match(r"[A-Za-z_]\w*=", words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env.append((key, value))
                if words:
                    out.append(Command(where, tuple(words), tuple(env)))
                words = []
            else:
                words.append(token)
    return out


def argv_commands(argv: list[str], where: str) -> list[Command]:
    """A container's command + args: run directly, or a script under `sh -c`."""
    if not argv:
        return []  # the image's default (KubeRay fills in `ray start` / `ray job submit`)
    if PurePosixPath(argv[0]).name in ("sh", "bash") and "-c" in argv:
        return simple_commands(argv[argv.index("-c") + 1], where)
    return [Command(where, tuple(str(a) for a in argv))]


def k8s_commands() -> list[Command]:
    out = []
    for path, obj in k8s_objects():
        where = name_of(path, obj)
        spec = obj.get("spec", {})
        for entry in (spec.get("entrypoint"), spec.get("jobTemplate", {}).get("entrypoint")):
            if isinstance(entry, str):
                out += simple_commands(entry, f"{where} entrypoint")
        for c in containers(obj):
            out += argv_commands([*c.get("command", []), *c.get("args", [])],
                                 f"{where} container {c['name']}")
    return out


def compose_commands() -> list[Command]:
    out = []
    for name, service in load(COMPOSE)[0]["services"].items():
        argv = []
        for key in ("entrypoint", "command"):
            value = service.get(key, [])
            argv += shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
        out += argv_commands(argv, f"{rel(COMPOSE)}: service {name}")
    return out


def launcher_commands() -> list[Command]:
    config = load(LAUNCHER)[0]
    sections = [(k, v) for k, v in config.items() if k.endswith("_commands")]
    for node_type, spec in config["available_node_types"].items():
        sections += [(f"{node_type}.{k}", v) for k, v in spec.items() if k.endswith("_commands")]
    return [c for key, scripts in sections for script in scripts
            for c in simple_commands(script, f"{rel(LAUNCHER)}: {key}")]


def readme_commands() -> list[Command]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README.read_text(), re.S)
    return [c for b in blocks for c in simple_commands(b, f"{rel(README)} example")]


def all_commands() -> list[Command]:
    return k8s_commands() + compose_commands() + launcher_commands() + readme_commands()


def job_of(argv) -> tuple[str, list[str]] | None:
    """(module, args) when argv runs a bertpipe job: `python -m jobs.X` or `bertpipe X`."""
    exe = PurePosixPath(argv[0]).name
    if exe.startswith("python") and len(argv) > 2 and argv[1] == "-m" and (
            argv[2] == "jobs" or argv[2].startswith("jobs.")):
        return argv[2], list(argv[3:])
    if exe == "bertpipe":
        return "jobs.cli", list(argv[1:])
    return None


def after_dashes(args) -> list[str]:
    args = list(args)
    return args[args.index("--") + 1:] if "--" in args else []


def is_checked(cmd: Command) -> bool:
    """Commands this test parses: bertpipe jobs, `ray job submit`, `ray start`, `mlflow server`."""
    a = list(cmd.argv)
    tool = PurePosixPath(a[0]).name
    return bool(job_of(a)) or (tool == "ray" and (a[1:2] == ["start"] or a[1:3] == [
        "job", "submit"])) or (tool == "mlflow" and a[1:2] == ["server"])


COMMANDS = all_commands()
CHECKED = [c for c in COMMANDS if is_checked(c)]


def parse_argparse(parser, args: list[str], where: str):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        last = (err.getvalue().strip().splitlines() or ["(no message)"])[-1]
        pytest.fail(f"{where}: `{parser.prog}` rejects {shlex.join(args)}: {last}")


def parse_click(command, name: str, args: list[str], where: str) -> dict:
    import click
    try:
        return command.make_context(name, list(args)).params
    except click.ClickException as e:
        pytest.fail(f"{where}: `{name}` rejects {shlex.join(args)}: {e.format_message()}")


def bertpipe_module(args: list[str], where: str) -> tuple[str, list[str]]:
    from jobs.cli import BENCHES, COMMANDS as SUBCOMMANDS
    assert args, f"{where}: `bertpipe` without a command"
    if args[0] == "bench":
        assert args[1:2] and args[1] in BENCHES, f"{where}: no benchmark {args[1:2]}"
        return BENCHES[args[1]], args[2:]
    assert args[0] in SUBCOMMANDS, f"{where}: bertpipe has no command {args[0]!r}"
    return SUBCOMMANDS[args[0]], args[1:]


def resolved_config(module: str, ns):
    """The validated config a job would run with, for the jobs whose configs we know."""
    from jobs.configargs import resolve
    if module == "jobs.prepare":
        from pipeline.config import PrepareConfig
        return resolve(PrepareConfig, ns).validate()
    if module == "jobs.pretrain":
        from jobs.pretrain_config import PretrainConfig, preset_path
        from jobs.pretrain_deepspeed import deepspeed_config
        if ns.preset:
            ns.config = preset_path(ns.preset)
        cfg = resolve(PretrainConfig, ns).validate()
        deepspeed_config(cfg, gpu=True)  # merges --deepspeed-config files, if any
        return cfg
    if module == "jobs.finetune":
        from jobs.finetune_config import FinetuneConfig, preset_path
        if ns.preset:
            ns.config = preset_path(ns.preset)
        return resolve(FinetuneConfig, ns).validate()
    if module == "jobs.evaluate":
        from jobs.evaluate import EvaluateConfig
        return resolve(EvaluateConfig, ns).validate()
    return None


def check_job(module: str, args: list[str], where: str):
    """Fail unless `python -m module args` is a real invocation; returns its config if known."""
    if module == "jobs.cli":
        module, args = bertpipe_module(args, where)
    assert importlib.util.find_spec(module) is not None, (
        f"{where}: {module} does not exist, so `python -m {module}` fails")
    check_repo_paths(args, where)
    mod = importlib.import_module(module)
    if not hasattr(mod, "build_parser"):
        # jobs without build_parser yet: their --help must list every flag used
        run = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, text=True,
                             capture_output=True, timeout=120)
        assert run.returncode == 0, f"{where}: python -m {module} --help failed: {run.stderr}"
        for flag in (a.split("=")[0] for a in args if a.startswith("--") and a != "--"):
            assert flag in run.stdout, f"{where}: {module} has no option {flag}"
        return None
    ns = parse_argparse(mod.build_parser(), args, where)
    if module == "jobs.submit":
        nested = after_dashes(args)
        assert nested, f"{where}: `bertpipe submit` needs `-- COMMAND`"
        check_command(Command(where + " (submitted)", tuple(nested)))
        return None
    return resolved_config(module, ns)


def check_repo_paths(args, where: str) -> None:
    from jobs.finetune_config import presets as finetune_presets
    from jobs.pretrain_config import presets as pretrain_presets
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if re.fullmatch(r"(jobs|infra|pipeline|model)/[\w./-]+", value):
            assert (REPO / value).exists(), f"{where}: {value} does not exist in the repo"
        if i and args[i - 1] == "--preset":
            known = {**pretrain_presets(), **finetune_presets()}
            assert value in known, f"{where}: no preset {value!r} (jobs/presets/)"


def check_command(cmd: Command):
    """Check one command with the parser of the tool it runs; returns a job's config."""
    a, where = list(cmd.argv), f"{cmd.where}: `{cmd}`"
    job = job_of(a)
    if job:
        return check_job(*job, where)
    tool = PurePosixPath(a[0]).name
    if tool == "ray" and a[1:3] == ["job", "submit"]:
        from ray.dashboard.modules.job.cli import submit
        params = parse_click(submit, "ray job submit", a[3:], where)
        assert job_of(list(params["entrypoint"])), (
            f"{where}: the submitted command is not a bertpipe job")
        return check_command(Command(cmd.where + " (submitted)", tuple(params["entrypoint"])))
    if tool == "ray" and a[1:2] == ["start"]:
        from ray.scripts.scripts import start
        return parse_click(start, "ray start", a[2:], where)
    if tool == "mlflow" and a[1:2] == ["server"]:
        from mlflow.cli import server
        return parse_click(server, "mlflow server", a[2:], where)
    pytest.fail(f"{where}: not a command this test knows how to check")


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


# -- Kubernetes and KubeRay objects -----------------------------------------------------------

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


# -- MLflow ---------------------------------------------------------------------------------

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


# -- Ray cluster launcher -------------------------------------------------------------------

def test_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config
    raw = load(LAUNCHER)[0]
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type",
                "max_workers", "idle_timeout_minutes", "file_mounts", "setup_commands"):
        assert key in raw, f"{rel(LAUNCHER)} has no {key}"
    validate_config(prepare_config(raw))  # what `ray up` runs before it launches anything
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) > 0 and t["max_workers"] > t.get("min_workers", 0)
               for t in types.values()), "no autoscaled GPU node type"


def test_cluster_launcher_installs_the_project_it_mounts():
    raw = load(LAUNCHER)[0]
    mounts = raw["file_mounts"]
    target = next(t for t, src in mounts.items() if (REPO / src).resolve() == REPO)
    setup = " ; ".join(raw["setup_commands"])
    torch = re.search(r"pip install[^;]*\btorch==([\w.]+)", setup)
    assert torch and torch.group(1) == pinned("torch")
    assert f"-e {target}" in setup and setup.index("torch==") < setup.index(f"-e {target}")


def test_cluster_launcher_keeps_the_dashboard_private_and_auth_on():
    starts = [c for c in launcher_commands() if c.argv[:2] == ("ray", "start")]
    assert starts
    for cmd in starts:
        assert dict(cmd.env).get("RAY_AUTH_MODE") == "token", f"{cmd.where}: `{cmd}`"
        opts = check_command(cmd)
        if opts["head"]:
            assert opts["dashboard_host"] == "127.0.0.1", "the Jobs API would be reachable"
    rules = load(LAUNCHER)[0]["provider"].get("security_group", {}).get("IpPermissions", [])
    assert not [r for r in rules if r.get("FromPort", 0) <= 8265 <= r.get("ToPort", -1)]


# -- DeepSpeed presets ------------------------------------------------------------------------

DEEPSPEED_FILES = sorted((INFRA / "deepspeed").glob("*.json"))


@pytest.mark.parametrize("path", DEEPSPEED_FILES, ids=rel)
def test_deepspeed_presets_are_zero_configs_the_pretrain_job_accepts(path):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from jobs.pretrain_deepspeed import OWNED_KEYS, merge_user_config
    config = load(path)[0]
    assert not set(config) & set(OWNED_KEYS)
    zero = config.get("zero_optimization", {})
    assert not {"stage", "offload_optimizer", "offload_param"} & set(zero), (
        "--zero-stage and --offload-* own these; a file setting them would contradict the flags")
    for stage in (1, 2, 3):
        DeepSpeedZeroConfig(**zero, stage=stage)  # unknown or misspelled keys are refused
    merged = merge_user_config({"zero_optimization": {"stage": 2}}, rel(path))
    assert merged["zero_optimization"]["stage"] == 2
    assert path.name in README.read_text(), "infra/README.md's table must list every preset"


def test_pretrain_presets_that_name_a_deepspeed_file_build_a_deepspeed_config():
    from jobs.pretrain_config import load_preset, presets
    from jobs.pretrain_deepspeed import deepspeed_config
    named = 0
    for name in (n for n in presets() if n.startswith("pretrain-")):
        cfg = load_preset(name)
        if cfg.deepspeed_config:
            named += 1
            cfg.data = f"{BUCKET}/data"
            assert deepspeed_config(cfg, gpu=True)["zero_optimization"]["stage"] == cfg.zero_stage
    assert named


# -- workflow files and the image -------------------------------------------------------------

def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yaml")), ids=rel)
def test_workflow_files_use_real_config_keys(path):
    from jobs.configargs import from_dict
    from jobs.finetune_config import FinetuneConfig
    from jobs.pretrain_config import PretrainConfig, load_preset
    from pipeline.config import PrepareConfig
    wf = load(path)[0]
    assert wf["name"] and wf["storage"] and wf["prepare"] and wf["pretrain"]
    assert set(wf["prepare"]) <= field_names(PrepareConfig) - {"output"}
    for key in ("pretrain", "pretrain_phase2"):
        if key not in wf:
            continue
        stage = dict(wf[key])
        assert set(stage.pop("prepare", {})) <= field_names(PrepareConfig) - {"output"}
        base = load_preset(stage.pop("preset")) if "preset" in stage else PretrainConfig()
        values = {**dataclasses.asdict(base), **stage, "data": f"{BUCKET}/data"}
        from_dict(PretrainConfig, values, origin=f"{rel(path)} {key}").validate()
    for item in wf.get("finetune", []):
        assert set(item) <= field_names(FinetuneConfig) | {"preset"}
        from_dict(FinetuneConfig, {"model": "models:/m@phase2", **item}).validate()
    for item in wf.get("evaluate", []):
        assert item["task"] and item["data"]


def test_images_are_the_project_image_at_the_project_version():
    image = f"YOUR-REGISTRY/bertpipe:{pyproject()['project']['version']}"
    ours = {c["image"] for _, o in k8s_objects() for c in containers(o) if "bertpipe" in c["image"]}
    assert ours == {image}
    assert f"-t {image}" in README.read_text() and f"-t {image}" in DOCKERFILE.read_text()


def test_dockerfile_installs_pinned_cuda_torch_before_the_project():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    torch = re.search(r"pip install torch==([\w.]+)", text)
    assert torch and torch.group(1) == pinned("torch")
    assert text.index("torch==") < text.index("pip install -e .")
    # what the MLflow deployment needs from the same image: postgresql:// and basic-auth
    assert "psycopg2-binary" in text and "flask-wtf" in text
    workdir = re.search(r"^WORKDIR (\S+)", text, re.M).group(1)
    assert workdir == "/home/ray/bertpipe"  # where Ray starts, so where jobs run
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for item in source.split():
            assert (REPO / item).exists(), f"COPY {item}: not in the repo"
            assert f"!{item}" in ignore, f"COPY {item}: Dockerfile.dockerignore leaves it out"
