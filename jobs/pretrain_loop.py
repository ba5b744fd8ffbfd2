"""The training function every Ray Train worker runs: DeepSpeed, data, steps, checkpoints.

Per worker: build the model (same seeded init everywhere, or --init-from weights), wrap it
with `deepspeed.initialize` (ZeRO, precision, accumulation, clipping from the config), then
resume from `ray.train.get_checkpoint()` if Ray has one: DeepSpeed state plus
`trainer_state.json`, whose `micro_batches` is the data position. The loader is a pure
function of that position, and dropout is seeded per micro-batch from it too, so a resumed
run trains on the same samples in the same order with the same dropout masks as one that
never stopped.

Every `checkpoint_every` steps and at the end, each rank saves its DeepSpeed shard into a
local folder, rank 0 adds `trainer_state.json` and an HF export (`hf/`: safetensors, config,
vocab; what --init-from and the registry use), and all ranks report the folder to Ray Train,
which merges them into one checkpoint in storage. Rank 0 logs progress lines and MLflow
metrics (through `MetricLogger`, which never blocks). Returns rank 0's final metrics.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

TRAINER_STATE = "trainer_state.json"
DS_TAG = "deepspeed"  # one DeepSpeed tag per Ray checkpoint folder; the folder names the step


def _print(msg: str) -> None:
    # not print(): Ray Train patches it into its logger and also tees it, doubling each line
    sys.stdout.write(f"[pretrain] {msg}\n")
    sys.stdout.flush()


def _seed_for(seed: int, rank: int, micro: int) -> int:
    """Dropout seed of one micro-batch: a function of the data position, not of history."""
    return (seed * 1_000_003 + rank * 7_919 + micro * 104_729) % (2 ** 63)


def _fail_marker(cfg, run_name: str) -> str:
    from pipeline.storage import join
    return join(cfg.storage_path, run_name, f".fail-at-step-{cfg.fail_at_step}.done")


def _maybe_fail(cfg, run_name: str, step: int, rank: int, world: int) -> None:
    """Testing knob: the last rank kills its own process once per run, at fail_at_step."""
    from pipeline.storage import exists, write_file_atomic
    if cfg.fail_at_step != step or rank != world - 1:
        return
    marker = _fail_marker(cfg, run_name)
    if exists(marker):
        return
    write_file_atomic(marker, b"killed\n")
    _print(f"fail_at_step={step}: rank {rank} kills its own process (pid {os.getpid()})")
    os.kill(os.getpid(), signal.SIGKILL)


def _export_state_dict(engine, zero_stage: int):
    """Full fp32 weights on rank 0 (None elsewhere); ZeRO-3 gathers them from all ranks."""
    if zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
    else:
        sd = engine.module.state_dict()
    if sd is None:
        return None
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def save_checkpoint(engine, cfg, state: dict, metrics: dict, rank: int, vocab: list[str],
                    do_lower_case: bool) -> None:
    import ray.train

    import model.hf
    step = state["step"]
    folder = Path(tempfile.mkdtemp(prefix=f"bertpipe-ckpt-r{rank}-"))
    try:
        engine.save_checkpoint(str(folder), tag=DS_TAG)
        weights = _export_state_dict(engine, cfg.zero_stage)
        if rank == 0:
            model.hf.save(engine.module, folder / "hf", vocab=vocab, do_lower_case=do_lower_case,
                          state_dict=weights)
            (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=f"checkpoint-{step:08d}")
        if rank == 0:
            # the controller registers a report when it next polls the workers; a worker lost
            # before that would lose the checkpoint, so wait until it is committed
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def evaluate(engine, batches, device, window, world: int) -> dict:
    engine.eval()
    with torch.no_grad():
        for b in batches:
            window.add(engine(**b.model_inputs(device)), b)
    engine.train()
    return window.reduce(world, None, prefix="eval_")


def train_loop(loop_config: dict) -> dict | None:
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from jobs.pretrain_config import PretrainConfig
    from jobs.pretrain_deepspeed import (build_optimizer, build_schedule, deepspeed_config,
                                         safe_checkpoint_engine)
    from jobs.pretrain_metrics import Window, peak_flops, sample_digest
    from jobs.pretrain_model import build_model, model_config, resolve_init
    from jobs.tracking import MetricLogger
    from pipeline.loader import PretrainLoader, eval_batches, open_dataset, split_holdout
    from pipeline.storage import read_text

    # DeepSpeed calls torch's deprecated collective names on every step
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=".*(all_gather_into_tensor|reduce_scatter_tensor).*")
    cfg = PretrainConfig(**loop_config["config"])
    run_name, gpu = loop_config["run_name"], loop_config["use_gpu"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if gpu:
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, round(cfg.cpus_per_worker)))
    precision = cfg.resolved_precision(gpu)

    # -- data and model (identical on every rank) --
    ds = open_dataset(cfg.data)
    train_shards, held_out = split_holdout(ds.shards, cfg.eval_shards)
    init_dir = None
    if cfg.init_from:
        local = loop_config.get("init_dir")  # the driver's download, when on this node
        init_dir = Path(local) if local and Path(local).is_dir() else resolve_init(
            cfg.init_from, Path(tempfile.mkdtemp(prefix="bertpipe-init-")), loop_config["tracking_uri"])
    model_cfg = model_config(cfg, ds, init_dir)
    model = build_model(model_cfg, init_dir, cfg.seed)
    vocab = read_text(ds.vocab_file).splitlines()
    do_lower_case = bool(ds.manifest["vocab"].get("do_lower_case", True))

    optimizer = build_optimizer(model, cfg, gpu)
    schedule = build_schedule(optimizer, cfg)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    engine, _, _, schedule = deepspeed.initialize(model=model, optimizer=optimizer,
                                                  lr_scheduler=schedule,
                                                  config=deepspeed_config(cfg, gpu))
    engine.checkpoint_engine = safe_checkpoint_engine(engine._config)

    # -- resume: DeepSpeed state plus the data position --
    state = {"step": 0, "micro_batches": 0, "samples": 0, "world_size": world,
             "micro_batch_size": cfg.micro_batch(), "seed": cfg.seed, "digests": [""] * world,
             "metrics": {}, "attempts": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = json.loads((Path(folder) / TRAINER_STATE).read_text())
            for key in ("world_size", "micro_batch_size", "seed"):
                if saved[key] != state[key]:
                    raise RuntimeError(
                        f"run {run_name} was checkpointed with {key}={saved[key]} but resumes "
                        f"with {state[key]}; the data position only carries over unchanged "
                        "(use the same settings, or a new --run-name with --init-from)")
            engine.load_checkpoint(folder, tag=DS_TAG)
            state = saved
        if rank == 0:
            _print(f"resumed {run_name} from {checkpoint.path} at step {state['step']}")
    state["attempts"] += 1
    resumed_from = state["step"]
    digest = state["digests"][rank]

    loader = PretrainLoader(ds, train_shards, cfg.micro_batch(), rank=rank, world_size=world,
                            seed=cfg.seed, pad_to_multiple_of=cfg.pad_to_multiple_of,
                            prefetch=cfg.prefetch)
    evals = None
    accum = cfg.accumulation()
    peak = peak_flops(torch.cuda.get_device_name(device) if gpu else "cpu", precision)
    window = Window(device, model_cfg)
    eval_window = Window(device, model_cfg)
    logger = None
    if rank == 0:
        logger = MetricLogger(loop_config["tracking_uri"], loop_config.get("run_id"),
                              experiment=cfg.experiment, run_name=run_name)
        _print(f"{run_name}: {world} worker(s) on {'GPU' if gpu else 'CPU'}, {precision}, ZeRO "
               f"{cfg.zero_stage}, global batch {cfg.batch_size} = {cfg.micro_batch()} x {world} "
               f"x {accum}, {loader.batches_per_epoch(0) // accum} steps/epoch, "
               f"steps {state['step']} -> {cfg.max_steps}")

    stream = loader.iterate(start=state["micro_batches"])
    engine.train()
    step_started = time.perf_counter()
    final_eval: dict = state["metrics"].get("eval", {})
    try:
        while state["step"] < cfg.max_steps:
            for _ in range(accum):
                batch = next(stream)
                torch.manual_seed(_seed_for(cfg.seed, rank, state["micro_batches"]))
                out = engine(**batch.model_inputs(device))
                engine.backward(out.loss)
                engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
                window.add(out, batch)
                digest = sample_digest(digest, batch.sample_ids)
                state["micro_batches"] += 1
                state["samples"] += len(batch)
            state["step"] += 1
            step = state["step"]
            last = step == cfg.max_steps
            _maybe_fail(cfg, run_name, step, rank, world)

            metrics = None
            if step % cfg.log_every == 0 or last:
                metrics = window.reduce(world, peak)
                norm = engine.get_global_grad_norm()
                metrics.update(learning_rate=schedule.get_last_lr()[0], step=step,
                               samples=state["samples"] * world)
                if norm is not None:
                    metrics["grad_norm"] = float(norm)
                if rank == 0:
                    logger.log(metrics, step)
                    took = (time.perf_counter() - step_started) / cfg.log_every
                    _print(f"step {step}/{cfg.max_steps} loss {metrics['loss']:.4f} mlm "
                           f"{metrics['mlm_loss']:.4f} nsp {metrics.get('nsp_loss', 0):.4f} lr "
                           f"{metrics['learning_rate']:.2e} {metrics['samples_per_s']:.1f} "
                           f"samples/s {took:.3f} s/step")
                step_started = time.perf_counter()
            if (cfg.eval_every and step % cfg.eval_every == 0 or last) and held_out:
                if evals is None:
                    evals = eval_batches(ds, held_out, cfg.micro_batch(), rank, world,
                                         cfg.eval_samples, cfg.seed, cfg.pad_to_multiple_of)
                final_eval = evaluate(engine, evals, device, eval_window, world)
                if rank == 0:
                    logger.log(final_eval, step)
                    _print(f"eval at step {step}: " + " ".join(
                        f"{k} {v:.4f}" for k, v in final_eval.items()))
            if step % cfg.checkpoint_every == 0 or last:
                digests = [None] * world
                dist.all_gather_object(digests, digest)
                state["digests"] = digests
                state["metrics"] = {"train": metrics or state["metrics"].get("train", {}),
                                    "eval": final_eval}
                save_checkpoint(engine, cfg, state, {"step": step, **(metrics or {})}, rank,
                                vocab, do_lower_case)
    finally:
        if logger is not None:
            logger.close()
    if rank != 0:
        return None
    import hashlib
    train = state["metrics"].get("train", {})
    return {"step": state["step"], "samples": state["samples"] * world,
            "attempts": state["attempts"], "resumed_from": resumed_from,
            "data_digest": hashlib.sha256("".join(state["digests"]).encode()).hexdigest(),
            **{k: v for k, v in train.items() if k not in ("step", "samples")},
            **final_eval}


if __name__ == "__main__":
    sys.exit("run through `bertpipe pretrain` (jobs.pretrain)")
