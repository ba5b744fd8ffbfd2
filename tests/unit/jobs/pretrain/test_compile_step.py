"""`--compile`: a training step with the compiled encoder gives eager's loss and weights (CPU).

The pretraining job's own pieces: `build_model`, `compile_encoder`, its optimizer, the
loader's packed batches, dropout on (inductor told to draw random numbers as eager does).
"""
from __future__ import annotations

import pytest
import torch

from jobs.pretrain.config import PretrainConfig
from jobs.pretrain.model import build_model, compile_encoder, model_config
from jobs.train.engine import TorchEngine
from jobs.train.optim import build_optimizer
from pipeline.dataset import open_dataset
from pipeline.loader import PretrainLoader
from tests.helpers import cxx_compiler, write_dataset


@pytest.mark.slow
@pytest.mark.skipif(cxx_compiler() is None, reason="no C++ compiler for torch.compile on CPU")
def test_a_compiled_training_step_gives_eager_loss_and_weights(tmp_path):
    import torch._inductor.config as inductor
    with inductor.patch(fallback_random=True):  # dropout masks as in eager
        _compiled_step_equals_eager(tmp_path)


def _compiled_step_equals_eager(tmp_path):
    data = write_dataset(tmp_path / "data", max_len=64)
    cfg = PretrainConfig(data=str(data), model="bert-tiny", max_position_embeddings=64,
                         learning_rate=1e-3, compile=True)
    ds = open_dataset(cfg.data)
    engines = {}
    for name in ("eager", "compiled"):
        m = build_model(model_config(cfg, ds, None), None, seed=0)
        if name == "compiled":
            compile_encoder(m)
            assert "bert.encoder.layer.0.attention.self.query.weight" in m.state_dict()
        engines[name] = TorchEngine(m, build_optimizer(m, cfg, gpu=False), max_grad_norm=1.0)
    loader = PretrainLoader(ds, ds.shards, 8, seed=0, packing=True, prefetch=False)
    for i, batch in zip(range(1), loader.iterate()):  # one step: compiling is the cost
        losses = {}
        for name, engine in engines.items():
            torch.manual_seed(100 + i)  # the same dropout seed for both, as the job seeds it
            out = engine(**batch.model_inputs())
            engine.backward(out.loss)
            engine.step()
            losses[name] = out.loss.detach()
        torch.testing.assert_close(losses["compiled"], losses["eager"], atol=1e-5, rtol=1e-5)
    weights = [dict(e.module.named_parameters()) for e in engines.values()]
    for n, p in weights[0].items():
        torch.testing.assert_close(weights[1][n], p, atol=1e-5, rtol=1e-4, msg=n)
