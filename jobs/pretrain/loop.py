"""The training function every Ray Train worker runs: DeepSpeed, data, steps, checkpoints.

Per worker: build the model (same seeded init everywhere, or --init-from weights), wrap it
with `deepspeed.initialize` (ZeRO, precision, accumulation, clipping from the config), then
resume from `ray.train.get_checkpoint()` if Ray has one (`jobs.pretrain.checkpoint`). The
loader is a pure function of the data position stored there, and dropout is seeded per
micro-batch from that position too, so a resumed run trains on the same samples in the same
order with the same dropout masks as one that never stopped.

Each step runs `accumulation` micro-batches; every `log_every` steps the window's metrics
are summed over ranks and rank 0 prints a line and hands them to `MetricLogger` (never
blocks); every `eval_every` steps all ranks evaluate the held-out batches; every
`checkpoint_every` steps and at the end all ranks save. Returns rank 0's final metrics.

A step reads nothing back from the device: batches arrive built and (on GPUs) pinned from
the loader's thread and are copied without blocking, counts are the batch's host numbers,
losses are summed on the device (`jobs.pretrain.metrics.Window`) and read once per log
interval. `tests/unit/jobs/pretrain/test_no_sync.py` holds `Worker.step` to that.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch


def _print(msg: str) -> None:
    # not print(): Ray Train patches it into its logger and also tees it, doubling each line
    sys.stdout.write(f"[pretrain] {msg}\n")
    sys.stdout.flush()


def _due(step: int, every: int, last: bool) -> bool:
    return last or bool(every and step % every == 0)


def _fails_now(cfg, run_name: str, step: int, rank: int, world: int, saving: bool) -> bool:
    """Testing knobs: is this the last rank at fail_at_step, for the first time in the run
    (a marker in the run's storage says it happened)?"""
    from pipeline.storage import exists, join, write_file_atomic
    if cfg.fail_at_step != step or rank != world - 1 or cfg.fail_while_saving != saving:
        return False
    marker = join(cfg.storage_path, run_name, f".fail-at-step-{step}.done")
    if exists(marker):
        return False
    write_file_atomic(marker, b"killed\n")
    return True


def maybe_fail(cfg, run_name: str, step: int, rank: int, world: int) -> None:
    """Testing knob: the last rank kills its own process at fail_at_step, once per run."""
    if _fails_now(cfg, run_name, step, rank, world, saving=False):
        _print(f"fail_at_step={step}: rank {rank} kills its own process (pid {os.getpid()})")
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_hold(cfg, run_name: str, step: int, rank: int) -> None:
    """Testing knob: after hold_at_step's checkpoint, rank 0 holds (once per run) so that a
    test can inject a fault at a known point; it writes `.holding-at-step-N` in the run's
    storage and goes on when `.release-at-step-N` appears there, or after 10 minutes."""
    from pipeline.storage import exists, join, write_file_atomic
    if cfg.hold_at_step != step or rank != 0:
        return
    holding = join(cfg.storage_path, run_name, f".holding-at-step-{step}")
    if exists(holding):
        return
    write_file_atomic(holding, b"holding\n")
    _print(f"hold_at_step={step}: rank 0 holds")
    deadline = time.time() + 600
    release = join(cfg.storage_path, run_name, f".release-at-step-{step}")
    while not exists(release) and time.time() < deadline:
        time.sleep(0.2)


def torn_upload(cfg, run_name: str, step: int, rank: int, world: int):
    """Testing knob (fail_while_saving): for the last rank at fail_at_step, a checkpoint
    upload that writes half of one of its files, waits until rank 0's part (trainer state
    included) is in storage, and kills its own process; else None (Ray uploads)."""
    if not _fails_now(cfg, run_name, step, rank, world, saving=True):
        return None

    def upload(checkpoint, dir_name: str):
        from jobs.pretrain.checkpoint import TRAINER_STATE
        from pipeline.storage import exists, join, write_file_atomic
        dest = join(cfg.storage_path, run_name, dir_name)
        local = Path(checkpoint.path)
        first = sorted(p for p in local.rglob("*") if p.is_file())[0]
        body = first.read_bytes()
        write_file_atomic(join(dest, *first.relative_to(local).parts), body[:len(body) // 2])
        deadline = time.time() + 120
        while not exists(join(dest, TRAINER_STATE)) and time.time() < deadline:
            time.sleep(0.2)
        _print(f"fail_while_saving at step {step}: rank {rank} dies halfway through its "
               f"upload to {dest} (pid {os.getpid()})")
        os.kill(os.getpid(), signal.SIGKILL)
    return upload


class Worker:
    """One rank's training state: engine, data stream, metric windows, trainer state."""

    def __init__(self, loop_config: dict):
        import ray.train

        from jobs.pretrain.config import PretrainConfig
        from jobs.pretrain.metrics import Window
        from jobs.pretrain.model import build_model, model_config
        from jobs.train.device import peak_flops
        from jobs.train.sources import resolve_model
        from pipeline.dataset import open_dataset, split_holdout
        from pipeline.loader import PretrainLoader
        from pipeline.tokenizer import load_vocab

        self.started = time.perf_counter()
        self.cfg = cfg = PretrainConfig(**loop_config["config"])
        self.run_name, self.gpu = loop_config["run_name"], loop_config["use_gpu"]
        self.unigram_loss = loop_config.get("unigram_loss")  # context_gain's reference
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if self.gpu:
            from ray.train.torch import get_device
            self.device = get_device()
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, round(cfg.cpus_per_worker)))
        self.precision = cfg.resolved_precision(self.gpu)

        self.ds = ds = open_dataset(cfg.data)
        train_shards, self.held_out = split_holdout(ds.shards, cfg.eval_shards)
        init_dir = None
        if cfg.init_from:
            local = loop_config.get("init_dir")  # the driver's download, when on this node
            init_dir = Path(local) if local and Path(local).is_dir() else resolve_model(
                cfg.init_from, loop_config["tracking_uri"], flag="--init-from",
                need_vocab=False).hf_dir
        self.model_cfg = model_config(cfg, ds, init_dir)
        net = build_model(self.model_cfg, init_dir, cfg.seed, cfg.dropout)
        self.engine, self.schedule = self._deepspeed(net)
        self.vocab = load_vocab(ds.vocab_file)
        self.loader = PretrainLoader(ds, train_shards, cfg.micro_batch(), rank=self.rank,
                                     world_size=self.world, seed=cfg.seed,
                                     pad_to_multiple_of=cfg.pad_to_multiple_of,
                                     prefetch=cfg.prefetch, packing=cfg.packing,
                                     pin_memory=self.device.type == "cuda")
        peak_name = torch.cuda.get_device_name(self.device) if self.gpu else "cpu"
        self.peak = peak_flops(peak_name, self.precision)
        self.window = Window(self.device, self.model_cfg)
        self.eval_window = Window(self.device, self.model_cfg)
        self.evals = None  # held-out batches, collated on first use
        self.logger = self.system_metrics = None
        if self.rank == 0:
            from jobs.tracking import MetricLogger
            from jobs.tracking.system import start_system_metrics
            self.logger = MetricLogger(loop_config["tracking_uri"], loop_config.get("run_id"),
                                       experiment=cfg.experiment, run_name=self.run_name)
            if cfg.system_metrics_every:
                self.system_metrics = start_system_metrics(
                    loop_config["tracking_uri"], loop_config.get("run_id"),
                    cfg.system_metrics_every)

    def _deepspeed(self, model):
        import deepspeed

        from jobs.pretrain.model import compile_encoder
        from jobs.train.deepspeed import init_distributed, safe_checkpoint_engine
        from jobs.train.optim import build_optimizer, build_schedule
        cfg = self.cfg
        if cfg.compile:
            compile_encoder(model)
        optimizer = build_optimizer(model, cfg, self.gpu, offload=cfg.offload_optimizer)
        schedule = build_schedule(optimizer, cfg.warmup(cfg.max_steps), cfg.max_steps)
        init_distributed(self.gpu)
        engine, _, _, schedule = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule,
            config=cfg.deepspeed_json(self.gpu))
        engine.checkpoint_engine = safe_checkpoint_engine(engine._config)
        return engine, schedule

    def resume(self) -> None:
        """Trainer state from Ray's latest checkpoint (DeepSpeed state restored), or fresh."""
        import ray.train

        from jobs.pretrain import checkpoint as ckpt
        self.state = ckpt.TrainerState(self.world, self.cfg.micro_batch(), self.cfg.seed,
                                       self.cfg.packing)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            self.state = ckpt.load(self.engine, checkpoint, self.state)
            if self.rank == 0:
                _print(f"resumed {self.run_name} from {checkpoint.path} at step "
                       f"{self.state.step}")
        self.state.attempts += 1
        self.resumed_from = self.state.step
        self.digest = self.state.digests[self.rank]

    def step(self, stream) -> float:
        """One optimizer step over `accumulation` micro-batches; returns its learning rate.
        No host sync here (module docstring): nothing in it may read a device value."""
        from jobs.pretrain.metrics import sample_digest
        from jobs.train.seeds import dropout_seed
        lr = self.schedule.get_last_lr()[0]
        for _ in range(self.cfg.accumulation()):
            batch = next(stream)
            torch.manual_seed(dropout_seed(self.cfg.seed, self.rank, self.state.micro_batches))
            out = self.engine(**batch.model_inputs(self.device))
            self.engine.backward(out.loss)
            self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
            self.window.add(out, batch)
            self.digest = sample_digest(self.digest, batch.sample_ids)
            self.state.micro_batches += 1
            self.state.samples += len(batch)
        self.state.step += 1
        return lr

    def log(self, lr: float, since: float) -> dict:
        """Reduce the window over ranks; rank 0 prints and logs. Every rank calls it."""
        metrics = self.window.reduce(self.world, self.peak)
        metrics.update(learning_rate=lr, step=self.state.step,
                       samples=self.state.samples * self.world)
        if self.unigram_loss is not None:
            metrics["context_gain"] = self.unigram_loss - metrics["mlm_loss"]
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            metrics["grad_norm"] = float(norm)
        if self.rank == 0:
            self.logger.log(metrics, self.state.step)
            per_step = (time.perf_counter() - since) / self.cfg.log_every
            _print(f"step {self.state.step}/{self.cfg.max_steps} loss {metrics['loss']:.4f} "
                   f"mlm {metrics['mlm_loss']:.4f} nsp {metrics.get('nsp_loss', 0):.4f} "
                   f"lr {lr:.2e} {metrics['samples_per_s']:.1f} samples/s {per_step:.3f} s/step")
        return metrics

    def evaluate(self) -> dict:
        """Held-out MLM/NSP metrics; every rank runs the same number of batches."""
        from pipeline.loader import eval_batches
        if self.evals is None:
            self.evals = eval_batches(self.ds, self.held_out, self.cfg.micro_batch(), self.rank,
                                      self.world, self.cfg.eval_samples, self.cfg.seed,
                                      self.cfg.pad_to_multiple_of, self.cfg.packing)
        if not self.evals:
            return {}
        self.engine.eval()
        with torch.no_grad():
            for b in self.evals:
                self.eval_window.add(self.engine(**b.model_inputs(self.device)), b)
        self.engine.train()
        metrics = self.eval_window.reduce(self.world, None, prefix="eval_")
        if self.unigram_loss is not None:
            metrics["eval_context_gain"] = self.unigram_loss - metrics["eval_mlm_loss"]
        if self.rank == 0:
            self.logger.log(metrics, self.state.step)
            _print(f"eval at step {self.state.step}: "
                   + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def save(self, metrics: dict | None, eval_metrics: dict) -> None:
        import torch.distributed as dist

        from jobs.pretrain import checkpoint as ckpt
        digests = [None] * self.world
        dist.all_gather_object(digests, self.digest)
        self.state.digests = digests
        self.state.metrics = {"train": metrics or self.state.metrics.get("train", {}),
                              "eval": eval_metrics}
        ckpt.save(self.engine, self.cfg.zero_stage, self.state,
                  {"step": self.state.step, **(metrics or {})}, self.rank, self.vocab,
                  self.ds.manifest.vocab.do_lower_case,
                  upload=torn_upload(self.cfg, self.run_name, self.state.step, self.rank,
                                     self.world))

    def train(self) -> dict | None:
        cfg, state = self.cfg, self.state
        if self.rank == 0:
            _print(f"{self.run_name}: {self.world} worker(s) on {'GPU' if self.gpu else 'CPU'}, "
                   f"{self.precision}, ZeRO {cfg.zero_stage}, global batch {cfg.batch_size} = "
                   f"{cfg.micro_batch()} x {self.world} x {cfg.accumulation()}, "
                   f"{self.loader.batches_per_epoch(0) // cfg.accumulation()} steps/epoch, steps "
                   f"{state.step} -> {cfg.max_steps} (set up in "
                   f"{time.perf_counter() - self.started:.1f}s)")
        stream = self.loader.iterate(start=state.micro_batches)
        self.engine.train()
        eval_metrics = state.metrics.get("eval", {})
        since = time.perf_counter()
        while state.step < cfg.max_steps:
            lr = self.step(stream)
            step, last = state.step, state.step == cfg.max_steps
            maybe_fail(cfg, self.run_name, step, self.rank, self.world)
            metrics = None
            if _due(step, cfg.log_every, last):
                metrics = self.log(lr, since)
                since = time.perf_counter()
            if self.held_out and _due(step, cfg.eval_every, last):
                eval_metrics = self.evaluate() or eval_metrics
            if _due(step, cfg.checkpoint_every, last):
                self.save(metrics, eval_metrics)
            maybe_hold(cfg, self.run_name, step, self.rank)
        return self.summary() if self.rank == 0 else None

    def summary(self) -> dict:
        state = self.state
        _print(f"{self.run_name} at step {state.step} after "
               f"{time.perf_counter() - self.started:.1f}s in this attempt")
        train = state.metrics.get("train", {})
        return {"step": state.step, "samples": state.samples * self.world,
                "attempts": state.attempts, "resumed_from": self.resumed_from,
                "data_digest": hashlib.sha256("".join(state.digests).encode()).hexdigest(),
                **{k: v for k, v in train.items() if k not in ("step", "samples")},
                **state.metrics.get("eval", {})}

    def close(self) -> None:
        if self.system_metrics is not None:
            self.system_metrics.finish()
        if self.logger is not None:
            self.logger.close()


def train_loop(loop_config: dict) -> dict | None:
    """Ray Train's entry point on every worker; rank 0 returns the run's final metrics."""
    from jobs.train.runtime import apply_secrets, apply_settings
    apply_settings(loop_config.get("env", {}))  # before DeepSpeed loads its ops
    apply_secrets(loop_config.get("secrets"))   # the driver's credentials (S3, MLflow)
    # DeepSpeed calls torch's deprecated collective names on every step
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=".*(all_gather_into_tensor|reduce_scatter_tensor).*")
    worker = Worker(loop_config)
    try:
        worker.resume()
        return worker.train()
    finally:
        worker.close()


if __name__ == "__main__":
    sys.exit("run through `bertpipe pretrain` (python -m jobs.pretrain)")
