"""`bertpipe bench pretrain`: what Ray, DeepSpeed and the loader cost on top of the model step.

Three numbers on the same data and model:
1. bare step: forward + backward + AdamW of the model alone (no Ray, no DeepSpeed, no
   loader in the loop), one process, on pre-collated micro-batches: samples/s per worker;
2. full job: `bertpipe pretrain` with its workers, DeepSpeed and loader, samples/s in the
   steady state (the last logging window, after warm-up), against num_workers x (1);
3. loader alone: micro-batches/s one rank's `PretrainLoader` produces (shard reads and
   collation included), against the micro-batches/s a worker's step consumes. Target >= 5x.
   Without --data, also for the same corpus prepared with `--masking dynamic`: masked
   batches/s, the masking done by the loader (in its background thread, and without it).
Prints a JSON object as its last line. Without --data it prepares the pinned Wikipedia
corpus once into the cache (`bertpipe prepare`, local executor). Never asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jobs.config import apply_set, from_dict, values_for
from jobs.pretrain.config import PretrainConfig
from jobs.train.paths import scratch_dir


def log(msg: str) -> None:
    print(f"[bench pretrain] {msg}", file=sys.stderr, flush=True)


def default_data(masking: str = "static") -> Path:
    """The Wikipedia fixture prepared once (4096-token vocab trained on it, seq 128); the
    dynamic twin takes the static one's vocab."""
    from jobs.assets import cache_dir, wiki_jsonl
    base = cache_dir() / "bench" / "wiki128-v4096"
    out = base if masking == "static" else base.with_name(base.name + "-dynamic")
    if not (out / "manifest.json").exists():
        from jobs.prepare import prepare
        from pipeline.config import PrepareConfig
        log(f"preparing the Wikipedia corpus into {out}")
        vocab = {"vocab_size": 4096} if masking == "static" else \
            {"vocab": str(default_data() / "vocab.txt")}
        prepare(PrepareConfig(input=[str(wiki_jsonl())], format="jsonl", **vocab,
                              output=str(out), max_seq_length=128, dupe_factor=1, num_shards=6,
                              masking=masking, executor="local"))
    return out


def bare_step(cfg: PretrainConfig, batches: int = 30, warmup: int = 5) -> dict:
    """Samples/s of the model's own step on the loader's batches (collated beforehand)."""
    import torch

    from jobs.pretrain.model import build_model, model_config
    from jobs.train.device import use_gpu
    from jobs.train.optim import build_optimizer
    from pipeline.dataset import open_dataset, split_holdout
    from pipeline.loader import PretrainLoader

    gpu = use_gpu(cfg.use_gpu, ray_running=False)
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        torch.set_num_threads(max(1, round(cfg.cpus_per_worker)))
    ds = open_dataset(cfg.data)
    train, _ = split_holdout(ds.shards, cfg.eval_shards)
    loader = PretrainLoader(ds, train, cfg.micro_batch(), rank=0, world_size=cfg.num_workers,
                            seed=cfg.seed, pad_to_multiple_of=cfg.pad_to_multiple_of,
                            packing=cfg.packing)
    stream = loader.iterate()
    collated = [next(stream) for _ in range(batches + warmup)]
    data = [b.model_inputs(device) for b in collated]
    model = build_model(model_config(cfg, ds, None), None, cfg.seed, cfg.dropout).to(device).train()
    opt = build_optimizer(model, cfg, gpu)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.resolved_precision(gpu))
    samples = 0
    for i, inputs in enumerate(data):
        if i == warmup:
            if gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            samples += len(collated[i])  # instances, however many rows they fill
    if gpu:
        torch.cuda.synchronize()
    took = time.perf_counter() - started
    return {"samples_per_s": samples / took, "micro_steps_per_s": batches / took}


def loader_rate(cfg: PretrainConfig, batches: int = 2000, data: str | None = None,
                prefetch: bool | None = None) -> dict:
    """Micro-batches/s of one rank's loader, from position 0 (first shard read included;
    for dynamic data, the masking of every shard it reads)."""
    from pipeline.dataset import open_dataset, split_holdout
    from pipeline.loader import PretrainLoader
    ds = open_dataset(data or cfg.data)
    train, _ = split_holdout(ds.shards, cfg.eval_shards)
    loader = PretrainLoader(ds, train, cfg.micro_batch(), rank=0, world_size=cfg.num_workers,
                            seed=cfg.seed, pad_to_multiple_of=cfg.pad_to_multiple_of,
                            prefetch=cfg.prefetch if prefetch is None else prefetch,
                            packing=cfg.packing)
    started = time.perf_counter()
    stream = loader.iterate()
    samples = 0
    for _ in range(batches):
        samples += len(next(stream))
    took = time.perf_counter() - started
    return {"batches_per_s": batches / took, "samples_per_s": samples / took}


def full_job(cfg: PretrainConfig) -> dict:
    from jobs.pretrain.driver import run
    summary = run(cfg)
    m = summary["metrics"]
    return {"samples_per_s": m.get("samples_per_s"), "tokens_per_s": m.get("tokens_per_s"),
            "mfu": m.get("mfu"), "run_name": summary["run_name"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertpipe bench pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="a `bertpipe prepare` output (default: the "
                   "pinned Wikipedia corpus, prepared once into the cache)")
    p.add_argument("--preset", default="bert-tiny-cpu", help="a pretrain preset")
    p.add_argument("--max-steps", type=int, default=80, help="steps of the full job")
    p.add_argument("--skip-job", action="store_true", help="only the bare step and the loader")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pretrain config value (repeatable)")
    p.add_argument("--storage-path", default=None,
                   help="Ray storage of the job (default: a temp dir removed at exit)")
    args = p.parse_args(argv)

    values = values_for("pretrain", {"preset": args.preset})
    for item in args.overrides:
        apply_set(values, item)
    work = Path(args.storage_path or scratch_dir("bench-"))
    values.update(data=str(args.data or default_data()), max_steps=args.max_steps,
                  log_every=max(1, args.max_steps // 4), eval_every=0, eval_shards=1,
                  checkpoint_every=args.max_steps, run_name=f"bench-{int(time.time())}",
                  storage_path=str(work / "ray"),
                  tracking_uri=values.get("tracking_uri") or f"sqlite:///{work / 'mlflow.db'}")
    cfg = from_dict(PretrainConfig, values).validate()

    log(f"bare step: {cfg.model}, micro-batch {cfg.micro_batch()}")
    bare = bare_step(cfg)
    log(f"  {bare['samples_per_s']:.1f} samples/s, {bare['micro_steps_per_s']:.2f} micro-steps/s")
    log("loader alone, one rank")
    loader = loader_rate(cfg)
    ratio = loader["batches_per_s"] / bare["micro_steps_per_s"]
    log(f"  {loader['batches_per_s']:.0f} batches/s = {ratio:.0f}x what a step consumes")
    result = {"model": cfg.model, "micro_batch_size": cfg.micro_batch(),
              "num_workers": cfg.num_workers, "bare_step": bare, "loader": loader,
              "loader_vs_step": ratio}
    if args.data is None:
        dynamic = str(default_data("dynamic"))
        for prefetch in (True, False):
            rate = loader_rate(cfg, data=dynamic, prefetch=prefetch)
            key = "loader_dynamic" if prefetch else "loader_dynamic_no_prefetch"
            result[key] = rate
            result[key + "_vs_step"] = rate["batches_per_s"] / bare["micro_steps_per_s"]
            log(f"  dynamic masks{'' if prefetch else ', no prefetch'}: "
                f"{rate['batches_per_s']:.0f} masked batches/s = "
                f"{result[key + '_vs_step']:.0f}x what a step consumes")
    if not args.skip_job:
        log(f"full job: {cfg.num_workers} workers, ZeRO {cfg.zero_stage}, {cfg.max_steps} steps")
        job = full_job(cfg)
        ideal = bare["samples_per_s"] * cfg.num_workers
        result.update(job=job, job_vs_bare=job["samples_per_s"] / ideal if ideal else None)
        log(f"  {job['samples_per_s']:.1f} samples/s = {result['job_vs_bare']:.0%} of "
            f"{cfg.num_workers} x the bare step")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
