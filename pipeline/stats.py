"""Reference points that say whether pretraining learns: context-free baselines of the MLM task.

A model that ignores context can at best predict every masked token by its frequency. Its
cross-entropy is then the entropy of the masked-token distribution (nats) and its top-1
accuracy the share of the most frequent masked token: the *unigram baseline*, computed here
from the training shards' `masked_lm_ids` (static masking). With dynamic masking the masked
tokens are drawn from the corpus tokens at load time, so their distribution is that of the
shards' non-special tokens (masks undone), which is what is counted then (`source="tokens"`).
`context_gain` = unigram loss - model loss: what the model gets from the context, in nats.

A second, stricter reference (static masking only): *copy*, the best prediction from the
masked position's own input token alone. BERT's 80/10/10 rule leaves 10% of the chosen
tokens visible and unchanged, so a context-free model that copies its input token scores
about 0.9 x the unigram top-1 + 0.1; its loss is the conditional entropy H(target | input).

Reads at most `max_tokens` counted tokens, whole shards in manifest order (an estimate for
large corpora; the entropy's bias is about vocab / (2 x tokens) nats). Pure pyarrow / numpy:
never imports torch, Ray or MLflow, never changes the data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline.dataset import Dataset, ShardMeta, _list_column
from pipeline.errors import InputError
from pipeline.schema import SPECIAL_TOKENS
from pipeline.storage import filesystem, join
from pipeline.tokenizer import load_vocab

MAX_TOKENS = 4_000_000
# "near the plateau": less than this many nats below the unigram loss, or an accuracy below
# this multiple of the unigram top-1 (see plateau_warning)
PLATEAU_GAIN = 0.1
PLATEAU_RATIO = 1.5


@dataclass(frozen=True)
class Unigram:
    loss: float
    """Entropy of the masked-token distribution, nats (the best context-free loss)"""
    top1: float
    """Share of the most frequent masked token (the best context-free accuracy)"""
    top_token: str
    tokens: int
    """Tokens counted"""
    shards: int
    """Shards read"""
    source: str
    """masked (the shards' masked_lm_ids) or tokens (non-special input tokens: dynamic masking)"""
    copy_loss: float | None = None
    """H(target | the position's input token), nats; static masking only"""
    copy_top1: float | None = None
    """Accuracy of the best prediction from the position's input token alone"""

    def metrics(self) -> dict[str, float]:
        out = {"unigram_mlm_loss": self.loss, "unigram_mlm_accuracy": self.top1}
        if self.copy_loss is not None:
            out.update(copy_mlm_loss=self.copy_loss, copy_mlm_accuracy=self.copy_top1)
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def entropy_top1(counts: np.ndarray) -> tuple[float, float]:
    """(entropy in nats, share of the largest count) of a count vector."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no tokens counted")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum()), float(counts.max() / total)


def conditional_entropy_top1(inputs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(H(target | input) in nats, accuracy of predicting each input's most frequent target)."""
    keys = inputs.astype(np.int64) << 32 | targets.astype(np.int64)
    pairs, joint = np.unique(keys, return_counts=True)          # (pairs,), sorted by input
    first = pairs >> 32
    _, starts, per_input = np.unique(first, return_index=True, return_counts=True)
    total = joint.sum()
    given = np.repeat(np.add.reduceat(joint, starts), per_input)  # count of each pair's input
    loss = float(-(joint / total * np.log(joint / given)).sum())
    return loss, float(np.maximum.reduceat(joint, starts).sum() / total)


def _columns(ds: Dataset, meta: ShardMeta, names: list[str]):
    path = join(ds.path, meta.file)
    fs, inner = filesystem(path)
    try:
        return pq.read_table(inner, filesystem=fs, columns=names)
    except Exception as e:  # unreadable or foreign file: one line naming it
        raise InputError(f"shard {path}: cannot read it ({str(e).splitlines()[0]})") from None


def unigram_baseline(ds: Dataset, shards: list[ShardMeta], dynamic: bool = False,
                     max_tokens: int = MAX_TOKENS) -> Unigram:
    """The context-free baselines of the masked tokens of `shards` (the training shards)."""
    vocab = load_vocab(ds.vocab_file)
    special = np.array([vocab.index(t) for t in SPECIAL_TOKENS])
    size = max(len(vocab), ds.vocab_size)
    counts = np.zeros(size, dtype=np.int64)
    inputs, targets = [], []
    read = 0
    for meta in shards:
        table = _columns(ds, meta, ["input_ids", "masked_lm_positions", "masked_lm_ids"])
        ids, id_off = _list_column(table, "input_ids")
        pos, mlm_off = _list_column(table, "masked_lm_positions")
        mids, _ = _list_column(table, "masked_lm_ids")
        # flat index of each masked position: its row's start + its position in the row
        rows = np.repeat(np.arange(len(mlm_off) - 1), np.diff(mlm_off))
        flat = id_off[rows] + pos.astype(np.int64)
        if dynamic:
            original = ids.astype(np.int64)
            original[flat] = mids                       # undo any static masks
            kept = original[~np.isin(original, special)]
            counts += np.bincount(kept, minlength=size)[:size]
        else:
            counts += np.bincount(mids.astype(np.int64), minlength=size)[:size]
            inputs.append(ids[flat].astype(np.int64))
            targets.append(mids.astype(np.int64))
        read += 1
        if counts.sum() >= max_tokens:
            break
    if counts.sum() == 0:
        raise InputError(f"--data {ds.path}: no masked tokens in the training shards")
    loss, top1 = entropy_top1(counts)
    copy_loss = copy_top1 = None
    if not dynamic:
        copy_loss, copy_top1 = conditional_entropy_top1(np.concatenate(inputs),
                                                        np.concatenate(targets))
    return Unigram(loss, top1, vocab[int(counts.argmax())], int(counts.sum()), read,
                   "tokens" if dynamic else "masked", copy_loss, copy_top1)


def diagnostics(unigram: Unigram, metrics: dict) -> dict[str, float]:
    """context_gain (unigram loss - model MLM loss) and accuracy / unigram top-1, for the
    training window (`mlm_loss`, `mlm_accuracy`) and the held-out set (`eval_` keys)."""
    out = {}
    for prefix in ("", "eval_"):
        if metrics.get(f"{prefix}mlm_loss") is not None:
            out[f"{prefix}context_gain"] = unigram.loss - metrics[f"{prefix}mlm_loss"]
        if metrics.get(f"{prefix}mlm_accuracy") is not None:
            out[f"{prefix}mlm_accuracy_over_unigram"] = \
                metrics[f"{prefix}mlm_accuracy"] / max(unigram.top1, 1e-12)
    return out


def plateau_warning(unigram: Unigram, metrics: dict) -> str | None:
    """A one-line warning when the final model is near the unigram plateau, else None.

    Judged on the held-out metrics when there are any (else the last training window): a
    context gain under PLATEAU_GAIN nats (the right token gets under ~10% more probability
    than its frequency gives it) or an accuracy under PLATEAU_RATIO x the unigram top-1
    (a model that only learned frequencies, plus copying the 10% of unchanged tokens in
    part, sits between 1x and ~2x)."""
    prefix = "eval_" if metrics.get("eval_mlm_loss") is not None else ""
    loss, acc = metrics.get(f"{prefix}mlm_loss"), metrics.get(f"{prefix}mlm_accuracy")
    if loss is None or acc is None:
        return None
    gain, ratio = unigram.loss - loss, acc / max(unigram.top1, 1e-12)
    if gain >= PLATEAU_GAIN and ratio >= PLATEAU_RATIO:
        return None
    where = "held-out" if prefix else "training"
    return (f"near the unigram plateau: {where} MLM loss {loss:.3f} nats vs unigram "
            f"{unigram.loss:.3f} (context gain {gain:.3f}), accuracy {acc:.3f} = {ratio:.2f}x the "
            f"unigram top-1 {unigram.top1:.3f} (a clear pass: >= {PLATEAU_GAIN} nats and >= "
            f"{PLATEAU_RATIO}x); the model predicts little beyond token frequencies: train "
            "longer or at a higher rate")
