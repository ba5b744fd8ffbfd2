"""Where starting weights come from: HF folders, checkpoints (their hf/), MLflow URIs."""
from __future__ import annotations

import pytest

from jobs.train.sources import resolve_model
from pipeline.errors import InputError


def test_init_from_a_checkpoint_folder_uses_its_hf_export(tmp_path, minilm_dir):
    import shutil
    shutil.copytree(minilm_dir, tmp_path / "checkpoint-00000010" / "hf")
    found = resolve_model(str(tmp_path / "checkpoint-00000010"), None, tmp_path / "x")
    assert found.hf_dir == tmp_path / "checkpoint-00000010" / "hf"
    with pytest.raises(InputError, match="expected a HF BERT folder"):
        resolve_model(str(tmp_path), None, tmp_path / "y", flag="--init-from")


def test_a_folder_without_vocab_is_refused_where_the_vocab_must_come_with_it(tmp_path, minilm_dir):
    import shutil
    shutil.copytree(minilm_dir, tmp_path / "m")
    (tmp_path / "m" / "vocab.txt").unlink()
    with pytest.raises(InputError, match="no vocab.txt"):
        resolve_model(str(tmp_path / "m"), None)
    assert resolve_model(str(tmp_path / "m"), None, need_vocab=False).hf_dir == tmp_path / "m"
