"""The training function of one fine-tuning trial, run by every Ray Train worker.

Per worker: the task's head on the pretrained encoder (same seeded init on every rank; for the
scratch baseline, `trial["init"] == "scratch"`, the encoder keeps BERT's seeded init), AdamW
(no decay on biases and LayerNorm) with linear warmup over `warmup_steps` (steps or a fraction) then
linear decay to 0, torch DDP (`ray.train.torch.prepare_model`) or DeepSpeed ZeRO 0-2. Each
epoch every rank trains on its own share of a seeded permutation of the training features
(equal shares, so ranks step together), then infers its slice of the dev set; rank 0 gathers
the raw outputs, scores them (`jobs.finetune.predict`) and, when the dev metric improved,
saves the model as a HF folder (+ `bertpipe_task.json`, `metrics.json`) and reports it to
Ray Train as the checkpoint. With `CheckpointConfig(num_to_keep=1)` storage thus holds the
best epoch's model. Rank 0 logs the training loss and the dev metrics to the trial's MLflow
run (`MetricLogger`: never blocks training) and returns the best dev metrics.
A failed worker fails the trial: fine-tuning is short, rerunning it is the recovery.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

METRICS_FILE = "metrics.json"


def _print(msg: str) -> None:
    sys.stdout.write(f"[finetune] {msg}\n")  # not print(): Ray Train tees it, doubling lines
    sys.stdout.flush()


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's training features for `epoch`: an equal share of a seeded permutation
    (the n % world left over sit out this epoch, different ones each epoch)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    share = n // world
    return perm[rank * share:(rank + 1) * share]


def schedule_steps(n_train: int, batch_size: int, world: int, epochs: int) -> tuple[int, int]:
    """(steps per epoch, total steps) for a global batch over `world` ranks."""
    micro = batch_size // world
    per_epoch = math.ceil((n_train // world) / micro)
    return per_epoch, per_epoch * epochs


def initial_model(spec, hf_dir, trial: dict, default_seed: int,
                  reinit_layers: int = 0) -> torch.nn.Module:
    """A fit's model before training, the same on every rank: torch seeded with the fit's
    seed, then the task's head on the pretrained encoder (its pooler and top `reinit_layers`
    layers drawn afresh), or (init "scratch") the same architecture with BERT's
    initialization throughout, drawn from that seed."""
    from jobs.finetune.tasks import build_model, reinit_top
    torch.manual_seed(trial.get("seed", default_seed))
    pretrained = trial.get("init", "pretrained") == "pretrained"
    net = build_model(spec, hf_dir, pretrained=pretrained)
    return reinit_top(net, reinit_layers) if pretrained and reinit_layers else net


def save_best(net, spec, metrics: dict, epoch: int, vocab: list[str], do_lower_case: bool) -> Path:
    """The model as a HF folder plus its task spec and dev metrics (a new scratch folder,
    removed when this process exits)."""
    import model.hf
    from jobs.train.paths import scratch_dir
    folder = scratch_dir("finetune-best-")
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in model.hf.unwrap(net).state_dict().items()}
    model.hf.save(net, folder, vocab=vocab, do_lower_case=do_lower_case, state_dict=state)
    spec.save(folder)
    (folder / METRICS_FILE).write_text(json.dumps({"epoch": epoch, **metrics}, indent=2) + "\n")
    return folder


def _gather(raw: dict, world: int) -> list[dict]:
    if world == 1:
        return [raw]
    import torch.distributed as dist
    parts: list = [None] * world
    dist.all_gather_object(parts, raw)
    return parts


def train_loop(loop_config: dict) -> dict | None:
    import ray
    import ray.train

    from jobs.finetune.config import FinetuneConfig
    from jobs.finetune.predict import goodness, infer, merge, score, to_tensors
    from jobs.finetune.tasks import INPUTS, TaskSpec, tokenizer_for
    from jobs.tracking import MetricLogger
    from jobs.train.deepspeed import deepspeed_config, init_distributed
    from jobs.train.device import resolve_precision
    from jobs.train.optim import build_optimizer, build_schedule
    from jobs.train.runtime import apply_settings
    from jobs.train.seeds import dropout_seed
    from jobs.train.sources import local_model_dir
    from pipeline.tasks.features import collate

    apply_settings(loop_config.get("env", {}))  # before DeepSpeed loads its ops

    cfg = FinetuneConfig(**loop_config["config"])
    trial, spec = loop_config["trial"], TaskSpec(**loop_config["spec"])
    data = loop_config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    train, dev, dev_rows = data["train"], data["dev"], data["dev_rows"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    gpu = loop_config["use_gpu"]
    device = ray.train.torch.get_device() if gpu and world > 0 else torch.device("cpu")
    if not gpu and not loop_config["local"]:  # local mode: the driver's own threads
        torch.set_num_threads(max(1, round(cfg.cpus_per_worker)))
    precision = resolve_precision(cfg.precision, gpu)
    started = time.perf_counter()

    hf_dir = local_model_dir(loop_config["model_dir"], cfg.model, loop_config["tracking_uri"])
    _, vocab, lower = tokenizer_for(hf_dir)
    seed = trial.get("seed", cfg.seed)  # this fit's seed (--seeds: seed, seed+1, ...)
    net = initial_model(spec, hf_dir, trial, cfg.seed, cfg.reinit_layers)
    per_epoch, total = schedule_steps(len(train), trial["batch_size"], world, trial["epochs"])
    warmup = cfg.warmup(total)
    optimizer = build_optimizer(net, dataclasses.replace(cfg, learning_rate=trial["learning_rate"]),
                                gpu)
    schedule = build_schedule(optimizer, warmup, total)
    autocast = torch.bfloat16 if precision == "bf16" and not cfg.deepspeed else None
    if cfg.deepspeed:
        import deepspeed
        init_distributed(gpu)
        engine, _, _, schedule = deepspeed.initialize(
            model=net, optimizer=optimizer, lr_scheduler=schedule,
            config=deepspeed_config(
                batch_size=trial["batch_size"], micro_batch=trial["batch_size"] // world,
                accumulation=1, zero_stage=cfg.zero_stage, precision=precision,
                max_grad_norm=cfg.max_grad_norm, gpu=gpu))
        net = engine
    elif loop_config["local"]:
        net = net.to(device)
    else:
        net = ray.train.torch.prepare_model(net)  # DDP when world > 1, on this worker's device
    inner = net.module if hasattr(net, "module") else net

    logger = None
    if rank == 0 and loop_config.get("run_id"):  # no run: MLflow was unreachable at start
        logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"])
    if rank == 0:
        _print(f"{loop_config['trial_name']}: {spec.task}, {len(train)} train / {len(dev)} dev "
               f"features, {world} worker(s) on {'GPU' if gpu else 'CPU'}, "
               f"{'DeepSpeed ZeRO ' + str(cfg.zero_stage) if cfg.deepspeed else 'DDP'}, "
               f"lr {trial['learning_rate']:g} batch {trial['batch_size']} epochs "
               f"{trial['epochs']} seed {seed}, {trial.get('init', 'pretrained')} weights: "
               f"{per_epoch} steps/epoch")
    micro = trial["batch_size"] // world
    names = INPUTS + spec.target_names()
    dev_slice = np.array_split(np.arange(len(dev)), world)[rank]
    best, best_epoch, history, best_dir, step = None, 0, [], None, 0
    loss_sum, loss_count = torch.zeros((), device=device), 0  # on the device: no sync per step
    trained = [time.time(), None]  # wall-clock interval of the training loop itself
    try:
        if cfg.fail_trial_learning_rate == trial["learning_rate"]:  # testing knob
            raise torch.OutOfMemoryError(f"{loop_config['trial_name']}: out of memory at its "
                                         "first step (fail_trial_learning_rate, a test stand-in)")
        for epoch in range(1, trial["epochs"] + 1):
            net.train()
            order = epoch_order(len(train), seed, epoch, rank, world)
            for s in range(0, len(order), micro):
                torch.manual_seed(dropout_seed(seed, rank, step))
                batch = to_tensors(collate(train, order[s:s + micro], names), device)
                with torch.autocast(device_type=device.type, dtype=autocast,
                                    enabled=autocast is not None):
                    loss = net(**batch).loss
                if cfg.deepspeed:
                    net.backward(loss)
                    net.step()  # clips, steps the optimizer and the schedule
                else:
                    loss.backward()
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                loss_sum += loss.detach().float()
                loss_count += 1
                if rank == 0 and (step % cfg.log_every == 0 or step == total):
                    lr = schedule.get_last_lr()[0]
                    mean_loss = loss_sum.item() / loss_count  # the sync point, once per log line
                    if logger:
                        logger.log({"train_loss": mean_loss, "learning_rate": lr}, step)
                    _print(f"step {step}/{total} epoch {epoch} loss {mean_loss:.4f} "
                           f"lr {lr:.2e}")
                if step % cfg.log_every == 0 or step == total:
                    loss_sum.zero_()
                    loss_count = 0

            if epoch % cfg.eval_every and epoch != trial["epochs"]:
                continue  # dev is evaluated every eval_every epochs and after the last one
            raw = infer(inner, spec, dev, dev_slice, cfg.eval_batch_size, device, autocast)
            parts = _gather(raw, world)
            report: dict = {"epoch": epoch, "step": step}
            checkpoint = None
            if rank == 0:
                _, dev_metrics = score(spec, dev_rows, dev, merge(parts), tune_threshold=True)
                if "null_threshold" in dev_metrics:
                    spec = dataclasses.replace(spec, null_threshold=dev_metrics["null_threshold"])
                history.append({"epoch": epoch, **dev_metrics})
                report.update({f"dev_{k}": v for k, v in dev_metrics.items()})
                if logger:
                    logger.log({**{f"dev_{k}": v for k, v in dev_metrics.items()},
                                "epoch": epoch}, step)
                _print(f"epoch {epoch} dev " + " ".join(f"{k} {v:.4f}" for k, v in
                                                       dev_metrics.items()))
                if best is None or goodness(spec.metric, dev_metrics[spec.metric]) > \
                        goodness(spec.metric, best[spec.metric]):
                    best, best_epoch = dev_metrics, epoch
                    if best_dir is not None:
                        shutil.rmtree(best_dir, ignore_errors=True)
                    best_dir = save_best(inner, spec, dev_metrics, epoch, vocab, lower)
                    checkpoint = ray.train.Checkpoint.from_directory(str(best_dir))
            ray.train.report(report, checkpoint=checkpoint,
                             checkpoint_dir_name=f"best-epoch-{epoch:03d}" if checkpoint else None)
            if checkpoint is not None and not loop_config["local"]:
                shutil.rmtree(best_dir, ignore_errors=True)  # uploaded to storage by report
                best_dir = None
    finally:
        if logger is not None:
            logger.close()
    trained[1] = time.time()
    if rank != 0:
        return None
    out = {"best_epoch": best_epoch, "best": best, "history": history, "steps": step,
           "trained": trained,
           "train_features": len(train), "seconds": round(time.perf_counter() - started, 1)}
    if loop_config["local"]:  # local mode keeps no storage: hand the folder over directly
        out["best_dir"] = str(best_dir)
    return out


if __name__ == "__main__":
    sys.exit("run through `bertpipe finetune` (jobs.finetune)")
