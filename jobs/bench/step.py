"""`bertpipe bench step`: one BERT pretraining step, ours against transformers, on a GPU or CPU.

A step is forward + backward of MLM + NSP loss on one synthetic batch of `--batch-size`
sequences (plus the optimizer with `--optimizer`, always with `--deepspeed`). Sequence
lengths: `--lengths full` (all seq_len), `wiki` (the real length mix of the Wikipedia shards,
`jobs.bench.lengths`) or a file; `--packing` defaults to the wiki mix. Models timed, on the
same weights and the same sequences:
- `ours`: packed rows with `--packing` (varlen FlashAttention on CUDA), else one sequence
  per row padded to the longest;
- `ours-padded` (with `--packing`): the same sequences one per row, to see what packing buys;
- `transformers`: `BertForPreTraining` with SDPA on the padded rows and (B, T) labels.
Steps run interleaved so that load from other processes hits all alike; medians are
reported with sequences/s, real tokens/s, model TFLOP/s and MFU (model FLOPs of the real
tokens only, `model.flops`, over the GPU's dense bf16 peak, `jobs.train.device`), and on
CUDA each model's peak memory. `--sync-debug` (CUDA) then runs steps of `ours` under
`torch.cuda.set_sync_debug_mode("error")` and fails if anything makes the host wait.
`--suite` runs the GPU table (bert-base and bert-large at 128 and 512, packed and padded,
ours vs transformers; `jobs/bench/gpu_suite.sh`).

  bertpipe bench step                                   # CPU, bert-base, fp32, vs transformers
  bertpipe bench step --model bert-small --packing      # CPU: packed vs padded, wiki lengths
  bertpipe bench step --device cuda --model bert-large --precision bf16 --seq-len 128 \\
      --batch-size 256 [--packing] [--sync-debug] [--deepspeed --zero-stage 1] [--compile]

Runs with torch (+ pyyaml) alone: no Ray, MLflow, pyarrow or DeepSpeed on this path (DeepSpeed
only with `--deepspeed`, transformers only for the comparison, skipped when missing).
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

from jobs.bench.lengths import hf_labels, layout, sample_lengths, sequences
from jobs.config import ConfigError, add_config_args, resolve
from jobs.train.device import peak_flops
from jobs.train.engine import TorchEngine
from model import BertConfig, BertForPreTraining
from model.flops import pretraining_flops


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
    """Row length: the longest sequence, and the row that --packing fills"""
    batch_size: int = 8
    """Sequences per step (with --packing they fill fewer rows)"""
    lengths: str | None = None
    """Sequence lengths: full (all seq_len), wiki (real Wikipedia mix) or a FILE of integers
    (default: wiki with --packing, else full)"""
    packing: bool = False
    """Pack the sequences into rows (and also time ours padded on the same sequences)"""
    sync_debug: bool = False
    """CUDA: run steps of ours under torch.cuda.set_sync_debug_mode('error'); fail on a sync"""
    suite: bool = False
    """Run the GPU table: bert-base and bert-large at 128 and 512, packed and padded"""
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


def batches(cfg: BertConfig, b: StepBenchConfig, device) -> dict[str, dict]:
    """Inputs of each timed model for the same sequences, on `device`."""
    spec = b.lengths or ("wiki" if b.packing else "full")
    seqs = sequences(sample_lengths(spec, b.seq_len, b.batch_size, b.seed), cfg.vocab_size,
                     b.max_predictions, b.seed)
    padded = layout(seqs, packed=False, seq_len=b.seq_len)
    out = {"ours": layout(seqs, packed=True, seq_len=b.seq_len) if b.packing else padded}
    if b.packing:
        out["ours-padded"] = padded
    out["transformers"] = hf_labels(padded)
    return {k: {n: v.to(device) if isinstance(v, torch.Tensor) else v for n, v in x.items()}
            for k, x in out.items()}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def plain_step(engine: TorchEngine, inputs: dict):
    """forward + backward (+ the optimizer) through an engine's three calls (a TorchEngine,
    or a DeepSpeed engine, which has the same): no host sync inside."""
    def step():
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        return loss
    return step


def deepspeed_step(model, inputs, b: StepBenchConfig):
    """The same step through a DeepSpeed engine: engine(...), engine.backward, engine.step."""
    import deepspeed

    from jobs.tracking.server import free_port
    from jobs.train.deepspeed import deepspeed_config, init_distributed
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        os.environ.setdefault(k, v)
    gpu = b.device == "cuda"
    init_distributed(gpu)
    ds_config = deepspeed_config(batch_size=b.batch_size, micro_batch=b.batch_size,
                                 accumulation=1, zero_stage=b.zero_stage,
                                 precision=b.precision, max_grad_norm=1.0, gpu=gpu)
    # torch's AdamW (fused on GPU): no DeepSpeed op to JIT-compile on a machine without nvcc
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01,
                            fused=b.device == "cuda")
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    inputs = {k: v.to(engine.device) if isinstance(v, torch.Tensor) else v
              for k, v in inputs.items()}
    return plain_step(engine, inputs)


def time_interleaved(steps: dict, n: int, warmup: int, device):
    """Seconds per step of each named step function, run in turn so load hits all alike;
    each one's losses (read after the clock stops) and peak memory (CUDA, in its warmup)."""
    memory = {}
    for name, fn in steps.items():
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            fn()
        sync(device)
        if torch.device(device).type == "cuda":
            memory[name] = torch.cuda.max_memory_allocated() / 2 ** 30
    times = {name: [] for name in steps}
    losses = {name: [] for name in steps}
    for _ in range(n):
        for name, fn in steps.items():
            start = time.perf_counter()
            loss = fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            losses[name].append(loss.item())
    return times, losses, memory


def sync_free(step, n: int) -> str | None:
    """None if `n` steps run without a host sync under CUDA's sync debug mode, else where
    the first one happened."""
    import traceback
    sync("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(n):
            step()
    except RuntimeError as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "torch/" not in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "torch"
        return f"{str(e).splitlines()[0]} at {where}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sync("cuda")
    return None


def peak_tflops(b: StepBenchConfig) -> float | None:
    if b.peak_tflops is not None:
        return b.peak_tflops
    if b.device != "cuda":
        return None  # MFU only against a known tensor-core peak
    peak = peak_flops(torch.cuda.get_device_name(), b.precision)
    return peak / 1e12 if peak else None


def check(b: StepBenchConfig) -> None:
    if b.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    if b.max_predictions is None:
        b.max_predictions = b.seq_len * 5 // 32  # 20 at 128, 80 at 512
    if not 0 < b.max_predictions <= b.seq_len - 2:
        raise ConfigError(f"--max-predictions {b.max_predictions} must be in 1..seq_len-2")
    if b.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"--zero-stage {b.zero_stage} must be 0, 1, 2 or 3")
    if b.sync_debug and b.device != "cuda":
        raise ConfigError("--sync-debug needs --device cuda (on CPU nothing waits for a device;"
                          " tests/unit/jobs/pretrain/test_no_sync.py checks the step there)")


def run(b: StepBenchConfig) -> dict:
    check(b)
    cfg = BertConfig.from_preset(b.model, max_position_embeddings=max(512, b.seq_len))
    torch.manual_seed(b.seed)
    ours = BertForPreTraining(cfg).to(b.device).train()
    inputs = batches(cfg, b, b.device)
    models = {name: (ours, x) for name, x in inputs.items() if name != "transformers"}
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
        models["transformers"] = (theirs, inputs["transformers"])
    with torch.no_grad():  # sanity: the same model on the same sequences, the same loss
        eval_losses = {n: m.eval()(**x).loss.item() for n, (m, x) in models.items()}
    steps, engines = {}, {}
    for name, (m, x) in models.items():
        m.train()
        if b.deepspeed:
            steps[name] = deepspeed_step(m, x, b)
            continue
        if b.compile:
            m = torch.compile(m)
        opt = None
        if b.optimizer:
            from jobs.train.config import OptimConfig
            from jobs.train.optim import build_optimizer
            opt = build_optimizer(m, OptimConfig(), gpu=b.device == "cuda")
        engines[name] = TorchEngine(m, opt or _NoOptimizer(m),
                                    autocast=torch.bfloat16 if b.precision == "bf16" else None)
        steps[name] = plain_step(engines[name], x)
    times, losses_seen, memory = time_interleaved(steps, b.steps, b.warmup, b.device)

    first = inputs["transformers"]
    real = first["attention_mask"].sum(1).tolist()  # per sequence: padded rows, one each
    predictions = int((first["labels"] != -100).sum())
    flops = pretraining_flops(cfg, real, predictions)
    peak = peak_tflops(b)
    result = {"config": asdict(b), "device_name": torch.cuda.get_device_name()
              if b.device == "cuda" else "cpu", "threads": torch.get_num_threads(),
              "real_tokens": sum(real), "gflop_per_step": flops / 1e9, "peak_tflops": peak,
              "models": {}}
    for name, t in times.items():
        sec = statistics.median(t)
        shape = tuple(models[name][1]["input_ids"].shape)
        result["models"][name] = {
            "rows": shape[0], "width": shape[1],
            "padding": 1 - sum(real) / (shape[0] * shape[1]),
            "ms_per_step": sec * 1e3, "sequences_per_s": b.batch_size / sec,
            "tokens_per_s": sum(real) / sec, "achieved_tflops": flops / sec / 1e12,
            "mfu": flops / sec / (peak * 1e12) if peak else None,
            "peak_memory_gib": memory.get(name), "loss_eval": eval_losses[name],
            "loss_first": losses_seen[name][0], "loss_last": losses_seen[name][-1]}
    ms = {n: m["ms_per_step"] for n, m in result["models"].items()}
    if "transformers" in ms:
        result["speedup_vs_transformers"] = ms["transformers"] / ms["ours"]
    if "ours-padded" in ms:
        result["speedup_packed_vs_padded"] = ms["ours-padded"] / ms["ours"]
    result["loss_difference_eval"] = max(eval_losses.values()) - min(eval_losses.values())
    if b.sync_debug:
        result["sync"] = sync_free(steps["ours"], b.steps)
    return result


class _NoOptimizer:
    """Without --optimizer the step is forward + backward; gradients are dropped."""

    def __init__(self, model):
        self.model = model

    def step(self):
        pass

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def report(r: dict) -> str:
    b = r["config"]
    what = "fwd+bwd" + ("+optimizer" if b["optimizer"] or b["deepspeed"] else "")
    mode = f"deepspeed ZeRO-{b['zero_stage']}" if b["deepspeed"] else "plain"
    lengths = b["lengths"] or ("wiki" if b["packing"] else "full")
    lines = [f"{b['model']} {b['precision']} seq {b['seq_len']} batch {b['batch_size']} "
             f"sequences ({lengths} lengths: {r['real_tokens']} real tokens, <= "
             f"{b['max_predictions']} MLM positions) on {r['device_name']} ({r['threads']} "
             f"threads), {mode}, {what}, median of {b['steps']} steps",
             f"model FLOPs of the real tokens: {r['gflop_per_step']:.1f} GFLOP/step"
             + (f", peak {r['peak_tflops']:.0f} TFLOP/s" if r["peak_tflops"] else "")]
    for name, m in r["models"].items():
        mfu = f"  MFU {100 * m['mfu']:5.1f}%" if m["mfu"] is not None else ""
        mem = f"  {m['peak_memory_gib']:5.1f} GiB" if m["peak_memory_gib"] is not None else ""
        lines.append(f"  {name:<13} {m['rows']:4d}x{m['width']:<4d} pad {m['padding']:5.1%} "
                     f"{m['ms_per_step']:9.1f} ms/step {m['sequences_per_s']:8.1f} seq/s "
                     f"{m['tokens_per_s']:10.0f} tokens/s {m['achieved_tflops']:7.2f} TFLOP/s"
                     f"{mfu}{mem}  loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}")
    if "speedup_packed_vs_padded" in r:
        lines.append(f"  ours padded / ours packed time: {r['speedup_packed_vs_padded']:.2f}x")
    if "speedup_vs_transformers" in r:
        lines.append(f"  transformers / ours time: {r['speedup_vs_transformers']:.2f}x")
    lines.append(f"  same weights, same sequences: eval losses differ by at most "
                 f"{r['loss_difference_eval']:.1e}")
    if "sync" in r:
        lines.append("  sync debug: " + ("no host sync in " + str(b["steps"]) + " steps"
                                         if r["sync"] is None else "SYNC: " + r["sync"]))
    return "\n".join(lines)


SUITE = [  # (model, seq_len, batch size in sequences): ~10 s of GPU time each on an H200
    ("bert-base", 128, 256), ("bert-base", 512, 64),
    ("bert-large", 128, 256), ("bert-large", 512, 64),
]


def suite(b: StepBenchConfig) -> list[dict]:
    """The GPU table: each (model, seq) packed and padded on the wiki mix, ours vs
    transformers, bf16, plus one sync-debug check of the packed step."""
    results = []
    for model, seq_len, batch in SUITE:
        for packing in (True, False):
            c = StepBenchConfig(**{**asdict(b), "model": model, "seq_len": seq_len,
                                   "batch_size": batch, "packing": packing, "suite": False,
                                   "lengths": b.lengths or "wiki", "max_predictions": None,
                                   "sync_debug": packing and b.device == "cuda",
                                   "output_json": None})
            try:
                r = run(c)
                print(report(r), flush=True)
            except Exception as e:  # one GPU session: a failing config must not lose the rest
                r = {"config": asdict(c), "error": f"{type(e).__name__}: {e}"[:500]}
                print(f"{model} seq {seq_len} packing={packing}: {r['error']}", flush=True)
            results.append(r)
            if b.device == "cuda":
                torch.cuda.empty_cache()
    return results


def suite_table(results: list[dict]) -> str:
    """A markdown table of the suite (the README's GPU table)."""
    rows = ["| model | seq | layout | batch | ours seq/s | ours tokens/s | ours MFU | "
            "transformers seq/s | transformers MFU | ours / transformers | peak GiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b = r["config"]
        if "error" in r:
            rows.append(f"| {b['model']} | {b['seq_len']} | "
                        f"{'packed' if b['packing'] else 'padded'} | {b['batch_size']} | "
                        f"failed: {r['error'][:80]} |||||||")
            continue
        o = r["models"]["ours"]
        t = r["models"].get("transformers", {})
        pct = lambda x: f"{100 * x:.1f}%" if x is not None else "-"  # noqa: E731
        rows.append(f"| {b['model']} | {b['seq_len']} | {'packed' if b['packing'] else 'padded'}"
                    f" | {b['batch_size']} | {o['sequences_per_s']:.0f} | "
                    f"{o['tokens_per_s']:.0f} | {pct(o['mfu'])} | "
                    f"{t.get('sequences_per_s', 0):.0f} | {pct(t.get('mfu'))} | "
                    f"{r.get('speedup_vs_transformers', 0):.2f}x | "
                    f"{o['peak_memory_gib'] or 0:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertpipe bench step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, StepBenchConfig)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    b = resolve(StepBenchConfig, p.parse_args(argv))
    if b.suite:
        results = suite(b)
        print(suite_table(results))
        failed = [r for r in results if r.get("sync") or r.get("error")]
    else:
        results = run(b)
        print(report(results))
        failed = [results] if results.get("sync") else []
    if b.output_json:
        with open(b.output_json, "w") as f:
            json.dump(results, f, indent=2)
    if failed:
        print("a config failed or a step synchronized with the device (see above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # a GPU machine without the console script
    from jobs.cli import main as cli
    sys.exit(cli(["bench", "step", *sys.argv[1:]]))
