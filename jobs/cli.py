"""The `bertpipe` command: one entry point whose subcommands are the job modules.

`bertpipe NAME ARGS...` runs `jobs.NAME.main(ARGS)`, exactly what `python -m jobs.NAME ARGS...`
runs (and what `ray job submit` runs on a cluster). `bertpipe bench NAME` runs
`jobs.bench_NAME`. User errors end in one line on stderr and exit code 2.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "prepare": "jobs.prepare",
    "pretrain": "jobs.pretrain",
    "finetune": "jobs.finetune",
    "evaluate": "jobs.evaluate",
    "embed": "jobs.embed",
    "workflow": "jobs.workflow",
    "submit": "jobs.submit",
    "cluster": "jobs.cluster",
}
BENCHES = {
    "prepare": "jobs.bench_prepare",
    "prepare-zh": "jobs.bench_prepare_zh",
    "step": "jobs.bench_step",
    "pretrain": "jobs.bench_pretrain",
}

USAGE = """usage: bertpipe COMMAND [ARGS...]

commands:
  prepare     corpora -> masked, length-binned Parquet shards (Ray Data)
  pretrain    BERT pretraining on the shards (Ray Train + DeepSpeed, MLflow)
  finetune    fine-tune a pretrained model on a downstream task
  evaluate    evaluate a model on a task's data
  embed       feature vectors for a data file (Ray Data batch inference)
  workflow    prepare -> pretrain -> finetune -> evaluate, idempotent
  submit      submit a bertpipe command as a Ray job
  cluster     start/stop a local multi-node Ray cluster and MLflow server (up|down|status)
  bench NAME  benchmarks: prepare, prepare-zh, step, pretrain

`bertpipe COMMAND --help` shows each command's options."""


def _available(table: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, mod in table.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = mod
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        benches = _available(BENCHES)
        if not rest or rest[0] not in benches:
            print(f"usage: bertpipe bench {{{','.join(benches)}}} [ARGS...]", file=sys.stderr)
            return 2
        module = benches[rest[0]]
        rest = rest[1:]
    else:
        commands = _available(COMMANDS)
        if cmd not in commands:
            print(f"bertpipe: unknown command '{cmd}' (one of: {', '.join(commands)}, bench)",
                  file=sys.stderr)
            return 2
        module = commands[cmd]
    return importlib.import_module(module).main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
