"""What the infra tests share: the files in infra/, their Kubernetes objects, and every
command in them (RayJob entrypoints, container commands, launcher commands, the infra
README's examples) with a check that it is a real `bertpipe NAME` / `python -m jobs.NAME`
invocation (the module exists, its parser accepts the arguments, the config validates, the
repo files it names exist) or a real `ray start` / `ray job submit` / `mlflow server` call.

No cluster and no network: PyYAML, argparse, and the tools' own option parsers.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[3]
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


MODULE_COMMANDS = {"jobs.prepare": "prepare", "jobs.pretrain": "pretrain",
                   "jobs.finetune": "finetune", "jobs.evaluate": "evaluate", "jobs.embed": "embed",
                   "jobs.workflow": "workflow", "jobs.demo": "demo", "jobs.submit": "submit",
                   "jobs.cluster": "cluster"}


def bertpipe_command(module: str, args: list[str], where: str) -> tuple[str, list[str]]:
    """`python -m jobs.X ARGS` or `bertpipe X ARGS` as (command, args) of `bertpipe`."""
    from jobs.cli import BENCHES, JOBS, TOOLS
    if module != "jobs.cli":
        assert importlib.util.find_spec(module) is not None, (
            f"{where}: {module} does not exist, so `python -m {module}` fails")
        assert module in MODULE_COMMANDS, f"{where}: {module} is not a bertpipe command module"
        return MODULE_COMMANDS[module], args
    assert args, f"{where}: `bertpipe` without a command"
    if args[0] == "bench":
        assert args[1:2] and args[1] in BENCHES, f"{where}: no benchmark {args[1:2]}"
        return f"bench {args[1]}", args[2:]
    assert args[0] in {**JOBS, **TOOLS}, f"{where}: bertpipe has no command {args[0]!r}"
    return args[0], args[1:]


def check_job(module: str, args: list[str], where: str):
    """Fail unless the command is a real invocation; returns a config job's validated config."""
    from jobs.cli import JOBS, build_parser, config_class
    from jobs.config import resolve
    command, args = bertpipe_command(module, args, where)
    check_repo_paths(args, where)
    if command in JOBS:
        ns = parse_argparse(build_parser(command), args, where)
        cfg = resolve(config_class(command), ns, command=command).validate()
        if command == "pretrain":
            cfg.deepspeed_json(gpu=True)  # merges --deepspeed-config files, if any
        return cfg
    mod = importlib.import_module({"workflow": "jobs.workflow", "submit": "jobs.submit",
                                   "cluster": "jobs.cluster"}.get(command, "jobs.demo"))
    if not hasattr(mod, "build_parser"):
        return None
    ns = parse_argparse(mod.build_parser(), args, where)
    if command == "submit":
        nested = after_dashes(args)
        assert nested, f"{where}: `bertpipe submit` needs `-- COMMAND`"
        check_command(Command(where + " (submitted)", tuple(nested)))
    return None


def check_repo_paths(args, where: str) -> None:
    from jobs.config import presets
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if re.fullmatch(r"(jobs|infra|pipeline|model)/[\w./-]+", value):
            assert (REPO / value).exists(), f"{where}: {value} does not exist in the repo"
        if i and args[i - 1] == "--preset":
            known = {**presets("pretrain"), **presets("finetune")}
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
