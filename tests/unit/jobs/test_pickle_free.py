"""Models load pickle-free: a planted pickle (a `pytorch_model.bin` whose `__reduce__` would
create a file, the same bytes under the name `model.safetensors`, a DeepSpeed checkpoint
file) is refused with one line, and the file its payload would create never appears."""
from __future__ import annotations

import builtins
import json
import pickle

import pytest
import torch

import model.hf
from model import BertConfig, BertForPreTraining
from model.config import ModelError
from tests.helpers import job

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class Payload:
    """Unpickling this creates `path`: the test's witness that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "the planted pickle was executed"


@pytest.fixture
def folder(tmp_path):
    """A real bert-tiny HF folder (random weights) with a tiny vocab."""
    vocab = SPECIALS + [f"w{i}" for i in range(59)]
    net = BertForPreTraining(BertConfig.from_preset("bert-tiny", vocab_size=64,
                                                    max_position_embeddings=64))
    return model.hf.save(net, tmp_path / "model", vocab=vocab)


def plant_bin(folder, marker):
    (folder / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Payload(marker)},
               folder / "pytorch_model.bin")


def test_a_pytorch_bin_with_code_is_refused_and_never_run(folder, marker):
    plant_bin(folder, marker)
    with pytest.raises(ModelError) as e:
        model.hf.load(folder)
    msg = str(e.value)
    assert "pytorch_model.bin holds pickled code" in msg and "open" in msg
    assert "\n" not in msg and "safe_globals" not in msg   # no advice on loading it anyway


def test_a_pickle_named_model_safetensors_is_refused_and_never_run(folder, marker):
    (folder / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ModelError, match="model.safetensors is not a safetensors file"):
        model.hf.load(folder)


def test_plain_tensor_pickles_still_load(folder):
    state = model.hf.read_weights(folder)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert set(model.hf.read_weights(folder)) == set(state)


def test_evaluate_refuses_a_planted_pickle_in_one_line(folder, marker, tmp_path, capsys):
    plant_bin(folder, marker)
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": f"w{i} w{i + 1}", "label": "ab"[i % 2]}) + "\n"
                            for i in range(4)))
    code = job("evaluate")(["--model", str(folder), "--task", "classification",
                            "--labels", "a", "b", "--input", str(data),
                            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("bertpipe: error: ") and "holds pickled code" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_deepspeed_checkpoint_file_with_code_is_refused(tmp_path, marker):
    from jobs.train.deepspeed import safe_checkpoint_engine
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "ds_config": Payload(marker)}, path)
    with pytest.raises(ModelError, match="holds pickled code"):
        safe_checkpoint_engine().load(str(path))
