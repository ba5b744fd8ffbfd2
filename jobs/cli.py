"""The `bertpipe` command: one runner for every job.

Config jobs are a table of (command, config class, run function): the runner builds the
parser from the config's fields (docstrings are the help), resolves the config (defaults <
`--preset`/`--config` < `--set` < flags), calls the job and prints its summary as one JSON
object, the last line of stdout. Local paths in the config are made absolute first
(`jobs.train.paths`): Ray workers run in other folders. Tool commands (workflow, inspect, submit, cluster, bench)
keep their own arguments and run through the same error handling. `python -m jobs.NAME`
(what Ray jobs run) is the same as `bertpipe NAME`.

User errors (bad config, bad input, an unusable model) end in one line on stderr and exit
code 2; a job that fails after it started (training failed after its restarts, every trial
failed, a full disk) in one line and exit code 1.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass

from jobs.config import ConfigError, add_config_args, resolve
from jobs.train.paths import absolute_paths
from jobs.train.runtime import JobFailed
from pipeline.errors import InputError


@dataclass(frozen=True)
class Job:
    """A config-driven command: `run(config) -> summary dict`."""
    module: str
    config: str
    """Name of the config dataclass, importable from `module`"""
    help: str
    run: str = "run"
    presets: bool = False
    """Shipped presets jobs/presets/COMMAND-*.yaml (`--preset NAME`)"""


JOBS = {
    "prepare": Job("jobs.prepare", "PrepareConfig",
                   "corpora -> masked, length-binned Parquet shards (Ray Data)"),
    "pretrain": Job("jobs.pretrain.driver", "PretrainConfig",
                    "BERT pretraining on the shards (Ray Train + DeepSpeed, MLflow)",
                    presets=True),
    "finetune": Job("jobs.finetune.driver", "FinetuneConfig",
                    "fine-tune a pretrained model on a downstream task", presets=True),
    "evaluate": Job("jobs.evaluate", "EvaluateConfig", "evaluate a model on a task's data"),
    "embed": Job("jobs.embed", "EmbedConfig",
                 "feature vectors for a data file (Ray Data batch inference)"),
    "probe": Job("jobs.probe", "ProbeConfig",
                 "linear probe on a model's frozen features (vs. random initialization)"),
}
TOOLS = {  # commands with their own arguments: module.main(argv)
    "workflow": ("jobs.workflow", "prepare -> pretrain -> finetune -> evaluate, idempotent"),
    "inspect": ("jobs.inspect", "decode instances of a prepare output and count its statistics"),
    "demo": ("jobs.demo", "the whole workflow on embedded defaults (what `make demo` runs)"),
    "submit": ("jobs.submit", "submit a bertpipe command as a Ray job"),
    "cluster": ("jobs.cluster", "start/stop a local multi-node Ray cluster and MLflow server"),
}
BENCHES = {
    "prepare": "jobs.bench.prepare",
    "prepare-zh": "jobs.bench.prepare_zh",
    "step": "jobs.bench.step",
    "pretrain": "jobs.bench.pretrain",
}


def usage() -> str:
    lines = ["usage: bertpipe COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {job.help}" for name, job in JOBS.items()]
    lines += [f"  {name:<11} {text}" for name, (_, text) in TOOLS.items()]
    lines += [f"  {'bench NAME':<11} benchmarks: {', '.join(BENCHES)}", "",
              "`bertpipe COMMAND --help` shows each command's options."]
    return "\n".join(lines)


def config_class(name: str):
    job = JOBS[name]
    return getattr(importlib.import_module(job.module), job.config)


def build_parser(name: str) -> argparse.ArgumentParser:
    """The parser of config job `name`: one flag per config field, plus --preset/--config/--set."""
    job = JOBS[name]
    doc = (importlib.import_module(job.module).__doc__ or "").strip().split("\n\n")[0]
    parser = argparse.ArgumentParser(prog=f"bertpipe {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, config_class(name), presets_of=name if job.presets else None)
    return parser


def run_job(name: str, argv: list[str]) -> int:
    args = build_parser(name).parse_args(argv)
    # local paths absolute before any worker starts: workers run in other folders
    cfg = absolute_paths(resolve(config_class(name), args, command=name))
    summary = getattr(importlib.import_module(JOBS[name].module), JOBS[name].run)(cfg)
    print(json.dumps(summary, default=str), flush=True)
    return 0


def dispatch(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    if cmd in JOBS:
        return run_job(cmd, rest)
    if cmd in TOOLS:
        return importlib.import_module(TOOLS[cmd][0]).main(rest) or 0
    if cmd == "bench":
        if not rest or rest[0] not in BENCHES:
            print(f"usage: bertpipe bench {{{','.join(BENCHES)}}} [ARGS...]", file=sys.stderr)
            return 2
        return importlib.import_module(BENCHES[rest[0]]).main(rest[1:]) or 0
    print(f"bertpipe: unknown command '{cmd}' (one of: {', '.join([*JOBS, *TOOLS, 'bench'])})",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    try:
        return dispatch(argv)
    except (ConfigError, InputError, JobFailed) as e:
        print(f"bertpipe: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, JobFailed) else 2
    except OSError as e:
        from jobs.train.failures import disk_full, first_line
        if not disk_full(e):
            raise
        # written atomically, so what was there stays whole; what was half written is gone
        print(f"bertpipe: error: a filesystem is full ({first_line(e)[:300]}); free space and "
              "run again (finished outputs and checkpoints are intact)", file=sys.stderr)
        return 1
    except ValueError as e:
        # model.ModelError, without importing torch for every command: if model.config was
        # never imported, no ModelError was raised
        model_config = sys.modules.get("model.config")
        if model_config is None or not isinstance(e, model_config.ModelError):
            raise
        print(f"bertpipe: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
