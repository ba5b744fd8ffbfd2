"""`bertpipe prepare` / `python -m jobs.prepare`: corpora -> masked, length-binned Parquet shards.

Example: bertpipe prepare --input corpus/ --output shards/ --format text --vocab-size 30522


The driver lists the inputs, settles the vocab, checks the output directory, then runs the
three passes of `pipeline.shards` as Ray Data jobs (one task per file part, per block, per
shard) or, for small inputs (`--executor auto`), one after another in this process, and
writes `manifest.json` last: an output without a manifest is incomplete, and a rerun
replaces it. An output with a manifest for the same inputs and options is reused as is; one
for different ones is refused unless `--overwrite`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from typing import Callable

from jobs.config import to_dict
from jobs.train.runtime import ray_session, worker_env
from pipeline.config import OUTPUT_FIELDS, PrepareConfig
from pipeline.dynamic import MaskingSpec
from pipeline.errors import InputError
from pipeline.manifest import InputFile, Manifest, ShardEntry, VocabEntry
from pipeline.read import Part, check_first_record, plan_parts
from pipeline.schema import SCHEMA_VERSION
from pipeline.shards import build_block, merge_bins, plan_shards, tokenize_file, write_shard
from pipeline.storage import delete, expand_inputs, join, list_names, read_text, write_file_atomic
from pipeline.tokenizer import VocabInfo, load_vocab, train_vocab

OWN_NAMES = ("manifest.json", "vocab.txt", "_work")
Mapper = Callable[[Callable[[dict], dict], list[dict], str], list[dict]]


def log(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def ray_mapper() -> Mapper:
    """Map a function over items as a Ray Data job: one task per item, progress on the driver.
    Ray must be running (`ray_session`)."""
    import ray
    from ray.data import DataContext
    # the driver logs progress itself: no bars, no execution plan or "execution finished"
    # per pass and no warning that the bars are off (Ray Data's full logs stay in the Ray
    # session's log directory)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(
        logging.WARNING)

    def run(fn, items, name):
        if not items:
            return []
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map(lambda row: {"result": json.dumps(_catching_user_errors(fn, row))},
                    num_cpus=1)
        progress = _Progress(name, len(items))
        results = []
        for row in ds.iter_rows():
            result = json.loads(row["result"])
            if "user_error" in result:  # our own one-line error, not Ray's wrapping of it
                raise InputError(result["user_error"])
            results.append(result)
            progress.step()
        return results
    return run


def local_mapper(fn, items, name) -> list[dict]:
    """The same passes in this process, one item after another (benchmarks, debugging)."""
    progress = _Progress(name, len(items))
    results = []
    for item in items:
        results.append(fn(item))
        progress.step()
    return results


class _Progress:
    """'[prepare] tokenize: 3/12 (25%)' lines from the driver, at most one per 5 s."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done, self.last = name, total, 0, time.time()

    def step(self):
        self.done += 1
        if self.done == self.total or time.time() - self.last >= 5:
            self.last = time.time()
            log(f"  {self.name}: {self.done}/{self.total} ({100 * self.done // self.total}%)")


def _catching_user_errors(fn, row) -> dict:
    """Run `fn` in a worker; a user error travels back as data, to be raised by the driver."""
    try:
        return fn(row)
    except InputError as e:
        return {"user_error": str(e)}


def _job_key(cfg: PrepareConfig, files: list[tuple[str, int]], vocab_sha: str) -> str:
    """What makes two prepare runs the same: options that shape the output, inputs, vocab."""
    options = {k: v for k, v in to_dict(cfg).items() if k in OUTPUT_FIELDS and k != "input"}
    blob = json.dumps({"options": options, "inputs": files, "vocab": vocab_sha}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_output(cfg: PrepareConfig, job_key: str) -> Manifest | None:
    """The existing manifest if the output is already done; clears partial outputs."""
    names = list_names(cfg.output)
    if "manifest.json" in names:
        manifest = Manifest.from_json(read_text(join(cfg.output, "manifest.json")),
                                      join(cfg.output, "manifest.json"))
        if manifest.job_key == job_key and not cfg.overwrite:
            return manifest
        if not cfg.overwrite:
            raise InputError(f"output {cfg.output} already holds shards made from other inputs "
                             f"or options; pass --overwrite to replace them, or pick another "
                             f"--output")
    ours = [n for n in names if n in OWN_NAMES or n.startswith(("shard-", ".tmp-"))]
    foreign = [n for n in names if n not in ours]
    if foreign and not cfg.overwrite:
        raise InputError(f"output {cfg.output} is not empty and holds no bertpipe manifest "
                         f"({', '.join(foreign[:3])}...); pick an empty or new directory")
    if ours:
        if "manifest.json" not in ours:
            log(f"removing the partial output of an interrupted run in {cfg.output}")
        for n in ["manifest.json", *sorted(ours)]:  # manifest first: never a stale complete one
            if n in ours:
                delete(join(cfg.output, n))
    return None


def _vocab(cfg: PrepareConfig, files, mapper: Mapper) -> list[str]:
    if cfg.vocab is not None:
        try:
            text = read_text(cfg.vocab)
        except FileNotFoundError:
            raise InputError(f"vocab {cfg.vocab}: no such file") from None
        except UnicodeDecodeError:
            raise InputError(f"vocab {cfg.vocab}: not UTF-8 text; pass a vocab.txt with one "
                             f"WordPiece token per line") from None
        except OSError as e:
            raise InputError(f"vocab {cfg.vocab}: cannot read it ({e})") from None
        return load_vocab(text, name=cfg.vocab)
    log(f"training a WordPiece vocab of {cfg.vocab_size} on up to "
        f"{cfg.vocab_sample_bytes / 1e6:.0f} MB of the corpus")
    (result,) = mapper(lambda _: {"vocab": _train_vocab_task(cfg, files)}, [{"task": 0}],
                       "vocab")
    return result["vocab"]


def _train_vocab_task(cfg: PrepareConfig, files) -> list[str]:
    from pipeline.read import FileStats, read_documents

    def sentences():
        budget = cfg.vocab_sample_bytes
        for path, _ in files:
            for doc in read_documents(path, cfg.format, FileStats(path), cfg.text_field,
                                      cfg.text_column):
                for s in doc:
                    yield s
                    budget -= len(s)
                if budget <= 0:
                    return
    return train_vocab(sentences(), cfg.vocab_size, cfg.do_lower_case)


def use_ray(cfg: PrepareConfig, total_bytes: int) -> tuple[bool, str]:
    """Whether the job runs on Ray, and why. `auto` stays in this process for inputs up to
    `local_max_bytes` unless a cluster is named or Ray is already up in this process: below
    that size starting Ray (≈ 6 s) and scheduling tasks cost more than two cores save."""
    if cfg.executor != "auto":
        return cfg.executor == "ray", f"--executor {cfg.executor}"
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        return True, "a Ray cluster is named"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return True, "Ray is running in this process"
    if total_bytes > cfg.local_max_bytes:
        return True, f"input over --local-max-bytes {cfg.local_max_bytes / 1e6:.0f} MB"
    return False, f"input up to --local-max-bytes {cfg.local_max_bytes / 1e6:.0f} MB"


def prepare(cfg: PrepareConfig, mapper: Mapper | None = None) -> Manifest:
    """Run the whole job; returns the manifest (also written as OUTPUT/manifest.json)."""
    cfg.validate()
    started = time.time()
    files = expand_inputs(cfg.input)
    total_bytes = sum(size for _, size in files)
    if mapper is None:
        ray_, why = use_ray(cfg, total_bytes)
        log(f"{len(files)} input file(s), {total_bytes / 1e6:.1f} MB; running "
            f"{'on Ray' if ray_ else 'in this process'} ({why})")
        if ray_:
            with ray_session(cfg.address, worker_env([*cfg.input, cfg.output, cfg.vocab]),
                             log_to_driver=False):
                import ray
                cpus = int(ray.cluster_resources().get("CPU", 1))
                return _prepare(cfg, files, ray_mapper(), started, cpus)
    return _prepare(cfg, files, mapper or local_mapper, started)


def _prepare(cfg: PrepareConfig, files: list[tuple[str, int]], mapper: Mapper,
             started: float, cpus: int = 1) -> Manifest:
    """The job on `mapper`; `cpus` (the cluster's) only sets how finely files are split."""
    for path, _ in files[:1]:
        check_first_record(path, cfg.format, cfg.text_field, cfg.text_column)
    total_bytes = sum(size for _, size in files)
    vocab_given_sha = hashlib.sha256(read_text(cfg.vocab).encode()).hexdigest() \
        if cfg.vocab else ""
    job_key = _job_key(cfg, files, vocab_given_sha)
    done = _check_output(cfg, job_key)
    if done is not None:
        log(f"{cfg.output} is already complete for these inputs and options; nothing to do")
        return done

    vocab = _vocab(cfg, files, mapper)
    vocab_text = "\n".join(vocab) + "\n"
    write_file_atomic(join(cfg.output, "vocab.txt"), vocab_text.encode())
    info = VocabInfo.from_vocab(vocab)
    work = join(cfg.output, "_work")

    num_blocks = max(1, math.ceil(total_bytes / cfg.block_bytes))
    # parts of at most --split-bytes, and on a cluster small enough for 4 per CPU (the
    # output is the same for any split)
    split = cfg.split_bytes if cpus <= 1 else \
        min(cfg.split_bytes, max(1 << 20, total_bytes // (4 * cpus)))
    parts = [{"index": i, "path": p, "part": part.index, "start": part.start,
              "end": -1 if part.end is None else part.end}
             for i, (p, size) in enumerate(files)
             for part in plan_parts(p, size, cfg.format, split)]
    log(f"pass 1/3: tokenizing {len(files)} file(s) in {len(parts)} part(s) into "
        f"{num_blocks} shuffle block(s)")
    file_stats = _per_file(mapper(
        lambda row: tokenize_file(int(row["index"]), row["path"], cfg, vocab, num_blocks, work,
                                  _part(row)), parts, "tokenize"))

    log(f"pass 2/3: pairing and masking {num_blocks} block(s)")
    blocks = mapper(lambda row: build_block(row["block"], cfg, info, work),
                    [{"block": b} for b in range(num_blocks)], "instances")
    blocks.sort(key=lambda r: r["block"])
    rows = merge_bins(blocks)
    total_instances = sum(r["instances"] for r in blocks)
    if total_instances == 0:
        delete(work)
        raise InputError("the input produced no training instances (all of it empty, "
                         "unreadable or skipped: see the skip counts above); check --format")

    log(f"pass 3/3: writing {total_instances} instances into {cfg.num_shards} shard(s)")
    plan = plan_shards(rows, cfg.num_shards)
    with_starts = cfg.masking == "dynamic" and cfg.do_whole_word_mask
    shards = mapper(lambda row: write_shard(row["shard"], plan[row["shard"]], info.size,
                                            work, cfg.output, with_starts),
                    [{"shard": s} for s in range(cfg.num_shards)], "shards")
    shards.sort(key=lambda r: r["file"])

    skipped = Counter()
    for f in file_stats:
        skipped.update(f["skipped"])
    elapsed = time.time() - started
    input_tokens = sum(f["tokens"] for f in file_stats)
    counts = {
        "documents": sum(f["documents"] for f in file_stats),
        "sentences": sum(f["sentences"] for f in file_stats),
        "input_tokens": input_tokens,
        "instances": total_instances,
        "tokens": sum(s["tokens"] for s in shards),
        "masked_tokens": sum(r.get("masked_tokens", 0) for r in blocks),
        "random_next": sum(r.get("random_next", 0) for r in blocks),
    }
    config = to_dict(cfg)
    for key in ("address", "executor"):
        config.pop(key, None)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, job_key=job_key, config=config,
        vocab=VocabEntry("vocab.txt", hashlib.sha256(vocab_text.encode()).hexdigest(),
                         len(vocab), cfg.do_lower_case),
        max_seq_length=cfg.max_seq_length, bin_size=cfg.bin_size, nsp=cfg.nsp,
        inputs=[InputFile(f["path"], f["size"], f["sha256"]) for f in file_stats],
        skipped={"count": sum(skipped.values()), "by_reason": dict(sorted(skipped.items()))},
        counts=counts,
        instances_per_bin={str(b): sum(n.values()) for b, n in sorted(rows.items())},
        shards=[ShardEntry(**s) for s in shards], seconds=round(elapsed, 2),
        masking=_masking(cfg))
    write_file_atomic(join(cfg.output, "manifest.json"), manifest.to_json().encode())
    delete(work)
    _summary(manifest, elapsed)
    return manifest


def _part(row: dict) -> Part:
    end = int(row["end"])
    return Part(int(row["part"]), int(row["start"]), None if end < 0 else end)


def _per_file(results: list[dict]) -> list[dict]:
    """Pass 1's results per part summed per file (size and sha256 come from part 0)."""
    files: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: (r["path"], r["part"])):
        f = files.setdefault(r["path"], {"path": r["path"], "size": 0, "sha256": "",
                                         "documents": 0, "sentences": 0, "tokens": 0,
                                         "skipped": Counter()})
        if r["part"] == 0:
            f["size"], f["sha256"] = r["size"], r["sha256"]
        for key in ("documents", "sentences", "tokens"):
            f[key] += r[key]
        f["skipped"].update(r["skipped"])
    return list(files.values())


def _masking(cfg: PrepareConfig) -> dict:
    """The manifest's masking entry: which, and the parameters (the loader's, if dynamic)."""
    spec = MaskingSpec(cfg.masked_lm_prob, cfg.max_predictions_per_seq, cfg.do_whole_word_mask,
                       cfg.random_seed, word_starts=cfg.do_whole_word_mask)
    if cfg.masking == "dynamic":
        return spec.to_manifest()
    return {**spec.to_manifest(), "mode": "static", "word_starts": False}


def _summary(m: Manifest, elapsed: float) -> None:
    c = m.counts
    log(f"done in {elapsed:.1f}s: {c['documents']} documents, {c['sentences']} sentences, "
        f"{c['input_tokens']} input tokens -> {c['instances']} instances, {c['tokens']} tokens "
        f"in {len(m.shards)} shards ({c['input_tokens'] / max(elapsed, 1e-9):,.0f} input "
        f"tokens/s); skipped: {m.skipped['count']}"
        + "".join(f"\n[prepare]   skipped {n} x {r}" for r, n in m.skipped["by_reason"].items()))


def run(cfg: PrepareConfig) -> dict:
    """`bertpipe prepare`: the job, summarized in one line of JSON."""
    manifest = prepare(cfg)
    return {"output": cfg.output, **manifest.counts, "shards": len(manifest.shards),
            "skipped": manifest.skipped["count"]}


if __name__ == "__main__":
    from jobs.cli import main
    sys.exit(main(["prepare", *sys.argv[1:]]))
