"""Hugging Face BERT folders in and out: `load(path, cls)` and `save(model, path, vocab=...)`.

Parameter names equal transformers', so both directions are a state-dict copy plus files:
`config.json`, `model.safetensors`, `vocab.txt`, `tokenizer_config.json`,
`special_tokens_map.json`. A saved folder loads in `transformers.AutoModelFor*` and
`AutoTokenizer`; any HF BERT folder loads here (`model.safetensors` or `pytorch_model.bin`,
sharded or not, with or without the `bert.` prefix). Reads and writes with safetensors, json
and `torch.load(weights_only=True)` only: never imports transformers, never unpickles code.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import BertConfig, ModelError
from model.pretraining import BertForPreTraining

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# copies of other parameters in transformers' state dict (tied), never stored in our files
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF folder, by name, on the CPU."""
    path = Path(path)
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            break
    else:
        raise ModelError(f"{path} holds no BERT weights "
                         f"(expected one of: {', '.join(WEIGHT_FILES)})")
    files = [path / name]
    if name.endswith(".index.json"):  # sharded: the index maps each tensor to its file
        weight_map = json.loads(files[0].read_text())["weight_map"]
        files = [path / f for f in sorted(set(weight_map.values()))]
    state = {}
    for f in files:
        state.update(_read_tensors(f))
    return state


def _read_tensors(f: Path) -> dict[str, torch.Tensor]:
    """One weights file; a file that is not what its name says, or a pickle that would run
    code, is a one-line ModelError (nothing in it is executed)."""
    if f.suffix == ".safetensors":
        try:
            return load_file(f)
        except Exception as e:  # SafetensorError: a pickle or anything else under that name
            raise ModelError(f"{f} is not a safetensors file ({_first_line(e)}); refusing to "
                             "load it") from None
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: code, not tensors
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"it calls {found.group(1)}" if found else _first_line(e)
        raise ModelError(f"{f} holds pickled code, not only tensors ({what}); refused, "
                         "nothing in it was run (use a model.safetensors from a trusted "
                         "source)") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise ModelError(f"{f} is not a readable PyTorch weights file ({_first_line(e)})") \
            from None


def _first_line(e: Exception) -> str:
    line = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
    return f"{type(e).__name__}: {line[:160]}" if line else type(e).__name__


def hf_keys(state: dict, model: torch.nn.Module) -> dict:
    """Checkpoint names -> this model's names: old TF names (LayerNorm gamma/beta), the `bert.`
    prefix added (bare BertModel checkpoint into a head model) or removed (head checkpoint into
    BertModel, heads dropped), position-id buffers and tied copies dropped."""
    out = {}
    for k, v in state.items():
        if k.endswith("LayerNorm.gamma"):
            k = k[:-len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[:-len("beta")] + "bias"
        if k.endswith(("embeddings.position_ids", "embeddings.token_type_ids")) or k in TIED_KEYS:
            continue
        out[k] = v
    has_bert, prefixed = hasattr(model, "bert"), any(k.startswith("bert.") for k in out)
    if has_bert and not prefixed:
        out = {"bert." + k: v for k, v in out.items()}
    elif not has_bert and prefixed:
        out = {k[len("bert."):]: v for k, v in out.items() if k.startswith("bert.")}
    return out


def copy_state(model: torch.nn.Module, state: dict, origin: str = "checkpoint"):
    """Copy a HF state dict into `model`; returns (missing, unexpected) key lists.

    Missing heads (a new classifier, the pooler) stay as initialized. Missing encoder weights
    or a shape that disagrees with the config are errors.
    """
    state = hf_keys(state, model)
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ModelError(f"{origin}: {k} has shape {tuple(v.shape)} but the model expects "
                             f"{tuple(own[k].shape)} (config.json does not match the weights?)")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in TIED_KEYS]
    encoder = [k for k in missing if ".encoder." in f".{k}" or ".embeddings." in f".{k}"]
    if encoder:
        raise ModelError(f"{origin}: no weights for {encoder[0]} (and {len(encoder) - 1} more "
                         "encoder tensors); is it a BERT checkpoint?")
    return missing, list(result.unexpected_keys)


def load(path: str | Path, cls: type = BertForPreTraining, **overrides) -> torch.nn.Module:
    """A model of class `cls` from a HF folder; keyword arguments override config fields
    (e.g. num_labels=3, hidden_dropout_prob=0.0)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory (expected a HF BERT folder)")
    cfg = BertConfig.from_json(path / "config.json")
    if overrides:
        if "num_labels" in overrides:
            overrides.setdefault("id2label", None)
        cfg = BertConfig(**{**cfg.to_dict(), **overrides})
    model = cls(cfg)
    missing, unexpected = copy_state(model, read_weights(path), origin=str(path))
    if missing:
        log.info("%s: newly initialized (not in %s): %s", cls.__name__, path, ", ".join(missing))
    if unexpected:
        log.info("%s: ignored from %s: %s", cls.__name__, path, ", ".join(unexpected))
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The BERT model inside a DeepSpeed engine, DDP or torch.compile wrapper."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        else:
            return model


def read_vocab(vocab: str | Path | list[str]) -> list[str]:
    if isinstance(vocab, (str, Path)):
        if not Path(vocab).is_file():
            raise ModelError(f"vocab file {vocab} does not exist")
        # "\n" only: str.splitlines() breaks tokens such as U+2028 (bert-base-chinese)
        lines = Path(vocab).read_bytes().decode("utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line.rstrip("\r") for line in lines]
    return list(vocab)


def save_tokenizer(path: Path, vocab, do_lower_case: bool, vocab_size: int, max_len: int) -> None:
    """vocab.txt plus the config files that make AutoTokenizer build a fast BertTokenizer."""
    tokens = read_vocab(vocab)
    lacking = [t for t in SPECIAL_TOKENS.values() if t not in tokens]
    if lacking:
        raise ModelError(f"vocab lacks the special token(s) {', '.join(lacking)}")
    if len(tokens) > vocab_size:
        raise ModelError(f"vocab has {len(tokens)} tokens but the model only {vocab_size} "
                         "embedding rows")
    (path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case,
                        "strip_accents": None, "tokenize_chinese_chars": True,
                        "model_max_length": max_len, **SPECIAL_TOKENS}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (path / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")


def save(model: torch.nn.Module, path: str | Path, vocab: str | Path | list[str] | None = None,
         do_lower_case: bool = True, state_dict: dict | None = None) -> Path:
    """Write `model` as a HF folder. `vocab`: a vocab.txt path or the token list (no tokenizer
    files when None). `state_dict`: weights to write instead of the model's own (a ZeRO-3
    consolidated state dict, for one)."""
    model = unwrap(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg: BertConfig = model.config
    cfg.to_json(path / "config.json", architectures=[type(model).__name__])
    state = model.state_dict() if state_dict is None else state_dict
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    # own contiguous CPU copies: safetensors refuses tensors that share memory
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()
               if k not in TIED_KEYS}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    if vocab is not None:
        save_tokenizer(path, vocab, do_lower_case, cfg.vocab_size, cfg.max_position_embeddings)
    return path
