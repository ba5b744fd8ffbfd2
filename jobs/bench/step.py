"""`bertpipe bench step`: the time of one BERT pretraining step, ours against transformers.

A step is forward + backward of MLM + NSP loss on one synthetic batch of full-length pairs
(plus an AdamW step with `--optimizer`, always with `--deepspeed`). Ours predicts MLM only
at the masked positions; `transformers.BertForPreTraining` (same config, same weights, same
batch, HF labels with -100 elsewhere) predicts every position. Both are timed in one run,
interleaved step by step so that load from other processes hits both alike; medians are
reported with sequences/s, tokens/s, the time ratio and, on a GPU with a known bf16 peak,
MFU from `model.flops` (~1.9 GFLOP/token for bert-large at seq 128).

  bertpipe bench step                                   # CPU, bert-base, fp32, vs transformers
  bertpipe bench step --device cuda --model bert-large --precision bf16 --seq-len 128 \\
      --batch-size 64 [--deepspeed --zero-stage 1] [--compile]

Imports neither Ray nor MLflow: it runs on a GPU machine with only torch and deepspeed.
transformers is imported only for the comparison (skipped when it is not installed).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch

from jobs.config import ConfigError, add_config_args, resolve
from jobs.train.device import peak_flops
from model import BertConfig, BertForPreTraining
from model.flops import pretraining_flops_per_token


@dataclass
class StepBenchConfig:
    RENAMED: ClassVar[dict[str, str]] = {"preset": "model"}
    model: str = "bert-base"
    """Model size: bert-tiny, bert-mini, bert-small, bert-medium, bert-base, bert-large"""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the step runs"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16: autocast over fp32 weights (plain) or DeepSpeed's bf16 mode"""
    seq_len: int = 128
    """Tokens per sequence (all real: length-binned shards pad little)"""
    batch_size: int = 8
    """Sequences per step"""
    max_predictions: int | None = None
    """MLM positions per sequence (default: BERT's 20 at seq 128, 80 at seq 512)"""
    steps: int = 10
    """Timed steps per model"""
    warmup: int = 2
    """Untimed steps per model first (allocator, autotuning, compilation)"""
    compare: bool = True
    """Also time transformers.BertForPreTraining (not with --deepspeed)"""
    optimizer: bool = False
    """Include an AdamW step in each step (always on with --deepspeed)"""
    compile: bool = False
    """torch.compile both models"""
    deepspeed: bool = False
    """Drive our model through deepspeed.initialize (one process, no Ray)"""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage, 0-3 (with --deepspeed)"""
    peak_tflops: float | None = None
    """The device's peak TFLOP/s for MFU (default: the known bf16 peak of the GPU)"""
    seed: int = 0
    """Seed of the weights and the synthetic batch"""
    output_json: str | None = None
    """Also write the results to this JSON file"""


def synthetic_batch(cfg: BertConfig, b: StepBenchConfig, device) -> tuple[dict, dict]:
    """(ours, theirs) inputs for the same batch: sparse MLM targets vs HF (B, T) labels."""
    g = torch.Generator().manual_seed(b.seed)
    B, T, P = b.batch_size, b.seq_len, b.max_predictions
    input_ids = torch.randint(5, cfg.vocab_size, (B, T), generator=g)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    token_type_ids[:, T // 2:] = 1
    # P distinct positions per row, never [CLS] (0) or the final [SEP]
    positions = torch.rand(B, T - 2, generator=g).argsort(-1)[:, :P].sort(-1).values + 1
    ids = torch.randint(5, cfg.vocab_size, (B, P), generator=g)
    labels = torch.full((B, T), -100, dtype=torch.long).scatter(1, positions, ids)
    common = dict(input_ids=input_ids, attention_mask=torch.ones(B, T, dtype=torch.long),
                  token_type_ids=token_type_ids,
                  next_sentence_label=torch.randint(0, 2, (B,), generator=g))
    ours = dict(common, masked_lm_positions=positions, masked_lm_ids=ids)
    theirs = dict(common, labels=labels)
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return move(ours), move(theirs)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def plain_step(model, inputs, precision: str, device, optimizer=None):
    """forward + backward (+ AdamW), autocast in bf16 over fp32 weights."""
    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            loss = model(**inputs).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss
    return step


def deepspeed_step(model, inputs, b: StepBenchConfig):
    """The same step through a DeepSpeed engine: engine(...), engine.backward, engine.step."""
    import deepspeed

    from jobs.tracking.server import free_port
    from jobs.train.deepspeed import deepspeed_config
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        os.environ.setdefault(k, v)
    deepspeed.init_distributed(dist_backend="nccl" if b.device == "cuda" else "gloo")
    gpu = b.device == "cuda"
    ds_config = deepspeed_config(batch_size=b.batch_size, micro_batch=b.batch_size,
                                 accumulation=1, zero_stage=b.zero_stage,
                                 precision=b.precision, max_grad_norm=1.0, gpu=gpu)
    # torch's AdamW (fused on GPU): no DeepSpeed op to JIT-compile on a machine without nvcc
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01,
                            fused=b.device == "cuda")
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    inputs = {k: v.to(engine.device) for k, v in inputs.items()}

    def step():
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        return loss
    return step


def time_interleaved(steps: dict, n: int, warmup: int, device):
    """Seconds per step of each named step function, run in turn so load hits all alike;
    and each one's losses (read after the clock stops)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    sync(device)
    times = {name: [] for name in steps}
    losses = {name: [] for name in steps}
    for _ in range(n):
        for name, fn in steps.items():
            start = time.perf_counter()
            loss = fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            losses[name].append(loss.item())
    return times, losses


def peak_tflops(b: StepBenchConfig) -> float | None:
    if b.peak_tflops is not None:
        return b.peak_tflops
    if b.device != "cuda":
        return None  # MFU only against a known tensor-core peak
    peak = peak_flops(torch.cuda.get_device_name(), b.precision)
    return peak / 1e12 if peak else None


def run(b: StepBenchConfig) -> dict:
    if b.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    if b.max_predictions is None:
        b.max_predictions = b.seq_len * 5 // 32  # 20 at 128, 80 at 512
    if not 0 < b.max_predictions <= b.seq_len - 2:
        raise ConfigError(f"--max-predictions {b.max_predictions} must be in 1..seq_len-2")
    if b.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"--zero-stage {b.zero_stage} must be 0, 1, 2 or 3")
    cfg = BertConfig.from_preset(b.model, max_position_embeddings=max(512, b.seq_len))
    torch.manual_seed(b.seed)
    ours = BertForPreTraining(cfg).to(b.device).train()
    ours_in, theirs_in = synthetic_batch(cfg, b, b.device)
    models = {"ours": (ours, ours_in)}
    compare = b.compare and not b.deepspeed
    if compare and importlib.util.find_spec("transformers") is None:
        print("transformers is not installed: timing ours only", file=sys.stderr)
        compare = False
    if compare:
        import transformers
        hf_cfg = transformers.BertConfig.from_dict(cfg.to_hf_dict())
        hf_cfg._attn_implementation = "sdpa"
        theirs = transformers.BertForPreTraining(hf_cfg).to(b.device).train()
        theirs.load_state_dict(ours.state_dict())  # same names, same weights
        models["transformers"] = (theirs, theirs_in)
        with torch.no_grad():  # sanity: the same model, so the same loss (eval: no dropout)
            losses = [m.eval()(**x).loss.item() for m, x in models.values()]
        for m, _ in models.values():
            m.train()
    steps = {}
    for name, (m, inputs) in models.items():
        if b.deepspeed:
            steps[name] = deepspeed_step(m, inputs, b)
            continue
        if b.compile:
            m = torch.compile(m)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=b.device == "cuda") \
            if b.optimizer else None
        steps[name] = plain_step(m, inputs, b.precision, b.device, opt)
    if b.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses_seen = time_interleaved(steps, b.steps, b.warmup, b.device)

    flops = pretraining_flops_per_token(cfg, b.seq_len, b.max_predictions)
    peak = peak_tflops(b)
    tokens = b.batch_size * b.seq_len
    result = {"config": asdict(b), "device_name": torch.cuda.get_device_name()
              if b.device == "cuda" else "cpu", "threads": torch.get_num_threads(),
              "gflop_per_token": flops / 1e9, "peak_tflops": peak, "models": {}}
    for name, t in times.items():
        sec = statistics.median(t)
        result["models"][name] = {
            "ms_per_step": sec * 1e3, "sequences_per_s": b.batch_size / sec,
            "tokens_per_s": tokens / sec, "achieved_tflops": flops * tokens / sec / 1e12,
            "mfu": flops * tokens / sec / (peak * 1e12) if peak else None,
            "loss_first": losses_seen[name][0], "loss_last": losses_seen[name][-1]}
    if compare:
        result["loss_difference_eval"] = abs(losses[0] - losses[1])
        result["speedup_vs_transformers"] = (result["models"]["transformers"]["ms_per_step"]
                                             / result["models"]["ours"]["ms_per_step"])
    if b.device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return result


def report(r: dict) -> str:
    b = r["config"]
    what = "fwd+bwd" + ("+AdamW" if b["optimizer"] or b["deepspeed"] else "")
    mode = f"deepspeed ZeRO-{b['zero_stage']}" if b["deepspeed"] else "plain"
    lines = [f"{b['model']} {b['precision']} seq {b['seq_len']} batch {b['batch_size']} "
             f"({b['max_predictions']} MLM positions) on {r['device_name']} "
             f"({r['threads']} threads), {mode}, {what}, median of {b['steps']} steps",
             f"model FLOPs: {r['gflop_per_token']:.3f} GFLOP/token"
             + (f", peak {r['peak_tflops']:.0f} TFLOP/s" if r["peak_tflops"] else "")]
    for name, m in r["models"].items():
        mfu = f"  MFU {100 * m['mfu']:.1f}%" if m["mfu"] is not None else ""
        lines.append(f"  {name:<13} {m['ms_per_step']:9.1f} ms/step  "
                     f"{m['sequences_per_s']:9.1f} seq/s  {m['tokens_per_s']:11.0f} tokens/s  "
                     f"{m['achieved_tflops']:7.2f} TFLOP/s{mfu}  "
                     f"loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}")
    if "speedup_vs_transformers" in r:
        lines.append(f"  transformers / ours time: {r['speedup_vs_transformers']:.2f}x "
                     f"(same weights: eval loss differs by {r['loss_difference_eval']:.1e})")
    if "peak_memory_gib" in r:
        lines.append(f"  peak GPU memory: {r['peak_memory_gib']:.1f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertpipe bench step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, StepBenchConfig)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    b = resolve(StepBenchConfig, p.parse_args(argv))
    result = run(b)
    print(report(result))
    if b.output_json:
        with open(b.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":  # a GPU machine without the console script
    from jobs.cli import main as cli
    sys.exit(cli(["bench", "step", *sys.argv[1:]]))
