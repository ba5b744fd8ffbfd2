"""torch.compile of the encoder gives eager's loss and gradients, padded and packed (CPU)."""
from __future__ import annotations

import pytest
import torch

from model import BertForPreTraining
from tests.helpers import cxx_compiler
from tests.unit.model.packed_data import make_sequences, packed, tiny_config, unpacked


@pytest.mark.slow
@pytest.mark.skipif(cxx_compiler() is None, reason="no C++ compiler for torch.compile on CPU")
def test_compiled_encoder_gives_eager_loss_and_gradients_on_padded_and_packed_batches():
    torch.manual_seed(0)
    eager = BertForPreTraining(tiny_config()).train()  # dropout probabilities are 0
    compiled = BertForPreTraining(tiny_config()).train()
    compiled.load_state_dict(eager.state_dict())
    # fullgraph: a graph break anywhere in the encoder (mask or varlen layout) fails here
    compiled.bert.encoder = torch.compile(compiled.bert.encoder, dynamic=False, fullgraph=True)
    seqs = make_sequences()
    for name, batch in (("padded", unpacked(seqs)), ("packed", packed(seqs)[0])):
        a, b = eager(**batch), compiled(**batch)
        torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=1e-5, msg=name)
        a.loss.backward()
        b.loss.backward()
        grads = dict(compiled.named_parameters())
        for n, p in eager.named_parameters():
            q = grads[n.replace("bert.encoder.", "bert.encoder._orig_mod.")]
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-5,
                                       msg=f"{name} {n}")
        eager.zero_grad()
        compiled.zero_grad()
