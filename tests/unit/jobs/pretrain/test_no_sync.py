"""A pretraining step never waits for the device: `Worker.step` reads no device value.

On a GPU every `.item()`, `float(t)`, `bool(t)`, `.tolist()`, data-dependent shape
(`nonzero`), blocking host->device copy (`torch.tensor(x, device=cuda)`, `.to(cuda)` from
pageable memory) or device synchronize stalls the host until the queued kernels finish. Two
checks that would fail if someone added one back:

1. The step on the meta device (tensors with shapes and no values: the host cannot read
   them, like a GPU's) in bf16 with packed batches, so the model takes its CUDA path
   (varlen FlashAttention with dropout): a dispatch mode stops at any op that reads a device
   value on the host or copies to the device blocking, and `torch.tensor(..., device=)` is
   caught too (it copies outside the dispatcher).
2. The step through a real DeepSpeed engine on CPU with the job's DeepSpeed config: the
   accelerator's `synchronize` is never called (DeepSpeed's throughput timer calls it per
   micro-batch unless the config turns it off).
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jobs.pretrain.checkpoint import TrainerState
from jobs.pretrain.config import PretrainConfig
from jobs.pretrain.loop import Worker
from jobs.pretrain.metrics import Window
from jobs.pretrain.model import build_model, model_config
from jobs.train.engine import TorchEngine
from jobs.train.optim import build_optimizer, build_schedule
from model import BertConfig, BertForPreTraining
from pipeline.dataset import open_dataset, split_holdout
from pipeline.loader import PretrainLoader
from tests.helpers import write_dataset

READS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
         "aten::unique", "aten::_unique2", "aten::repeat_interleave")


class HostSync(AssertionError):
    pass


def _off_host(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


class NoHostSync(TorchDispatchMode):
    """Raises at the first op that would make the host wait for the device."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops.add(name)
        if name in READS and any(_off_host(a) for a in args):
            raise HostSync(f"{name} reads a device tensor on the host")
        if name == "aten::_to_copy" and kwargs.get("device") is not None:
            src, dst = args[0], torch.device(kwargs["device"]).type
            blocking = not kwargs.get("non_blocking", False)
        elif name == "aten::copy_":
            src, dst = args[1], args[0].device.type
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        else:
            return func(*args, **kwargs)
        if src.device.type == "cpu" and dst != "cpu" and blocking:
            raise HostSync(f"{name}: a blocking host->device copy")
        if src.device.type != "cpu" and dst == "cpu":
            raise HostSync(f"{name}: a device->host copy")
        return func(*args, **kwargs)


def no_tensors_made_on_device(monkeypatch):
    """torch.tensor / as_tensor with a device copy from host memory outside the dispatcher."""
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)

        def make(*args, _original=original, **kwargs):
            if kwargs.get("device") is not None and torch.device(kwargs["device"]).type != "cpu":
                raise HostSync(f"torch.tensor(..., device={kwargs['device']}): a blocking copy")
            return _original(*args, **kwargs)
        monkeypatch.setattr(torch, name, make)


def worker(tmp_path, device, engine_for, packing=True, **overrides) -> Worker:
    """A Worker whose step runs outside Ray: the real loader, model config, window, state."""
    data = write_dataset(tmp_path / "data", max_len=64)
    cfg = PretrainConfig(data=str(data), model="bert-tiny", batch_size=8, micro_batch_size=4,
                         seed=0, packing=packing, prefetch=False, max_steps=20, **overrides)
    ds = open_dataset(cfg.data)
    w = Worker.__new__(Worker)  # __init__ needs a Ray Train context; step needs none of it
    w.cfg, w.rank, w.world, w.device = cfg, 0, 1, torch.device(device)
    w.model_cfg = model_config(cfg, ds, None)
    w.engine, w.schedule = engine_for(w)
    w.loader = PretrainLoader(ds, split_holdout(ds.shards, 1)[0], cfg.micro_batch(),
                              seed=cfg.seed, packing=packing, prefetch=False)
    w.window = Window(w.device, w.model_cfg)
    w.state, w.digest = TrainerState(1, cfg.micro_batch(), cfg.seed, packing), ""
    return w


def meta_engine(w: Worker):
    """The model and the multi-tensor LAMB on the meta device, bf16 like a GPU run."""
    cfg = BertConfig(**{**w.model_cfg.to_dict(), "hidden_size": 64, "num_attention_heads": 4})
    with torch.device("meta"):
        model = BertForPreTraining(cfg)
    model = model.to(torch.bfloat16).train()
    opt = build_optimizer(model, w.cfg.__class__(optimizer="lamb"), gpu=False)
    schedule = build_schedule(opt, 2, w.cfg.max_steps)
    return TorchEngine(model, opt, schedule, accumulation=w.cfg.accumulation(),
                       max_grad_norm=1.0), schedule


def test_a_packed_bf16_step_reads_no_device_value_and_copies_without_blocking(tmp_path,
                                                                               monkeypatch):
    w = worker(tmp_path, "meta", meta_engine)
    stream = w.loader.iterate()
    no_tensors_made_on_device(monkeypatch)
    with NoHostSync() as mode:
        for _ in range(3):
            w.step(stream)
    assert w.state.step == 3 and w.state.micro_batches == 6
    assert w.window.counts["micro_batches"] == 6 and w.window.counts["tokens"] > 0
    # the GPU path ran: varlen FlashAttention with dropout, forward and backward
    assert {"aten::_flash_attention_forward", "aten::_flash_attention_backward"} <= mode.ops


def test_the_check_catches_a_per_step_item_and_a_device_tensor_from_a_number(tmp_path,
                                                                             monkeypatch):
    w = worker(tmp_path, "meta", meta_engine)
    stream = w.loader.iterate()
    no_tensors_made_on_device(monkeypatch)
    add = Window.add
    monkeypatch.setattr(Window, "add", lambda self, out, b: (add(self, out, b), out.loss.item()))
    with pytest.raises(HostSync, match="_local_scalar_dense"), NoHostSync():
        w.step(stream)
    monkeypatch.setattr(Window, "add", lambda self, out, b: (
        add(self, out, b), torch.tensor(float(b.num_tokens), device=self.device)))
    with pytest.raises(HostSync, match="blocking copy"), NoHostSync():
        w.step(stream)


def deepspeed_engine(w: Worker):
    import deepspeed

    from jobs.tracking.server import free_port
    from jobs.train.deepspeed import init_distributed
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        os.environ.setdefault(k, v)
    init_distributed(gpu=False)   # as the job does (no inference-only op build on CPU)
    model = build_model(w.model_cfg, None, w.cfg.seed)
    opt = build_optimizer(model, w.cfg, gpu=False)
    schedule = build_schedule(opt, 2, w.cfg.max_steps)
    engine, _, _, schedule = deepspeed.initialize(model=model, optimizer=opt,
                                                  lr_scheduler=schedule,
                                                  config=w.cfg.deepspeed_json(gpu=False))
    return engine, schedule


@pytest.mark.slow
def test_the_deepspeed_step_never_synchronizes_the_device(tmp_path, monkeypatch):
    from deepspeed.accelerator import get_accelerator
    w = worker(tmp_path, "cpu", deepspeed_engine, packing=False)
    stream = w.loader.iterate()
    calls = []
    accelerator = get_accelerator()
    monkeypatch.setattr(accelerator, "synchronize", lambda *a, **k: calls.append(a))
    for _ in range(5):  # DeepSpeed's timer starts synchronizing from its third step
        w.step(stream)
    assert w.state.step == 5
    assert calls == []
