"""Synthetic pretraining batches for `bench step`: a length mix, and the same sequences
padded (one per row) or packed (several per row, `pipeline.packing`).

The default mix is real: the instance lengths of the pinned Wikipedia lead sections prepared
by `bertpipe prepare` (bert-base-uncased vocab, dupe factor 2) at seq 128 (35,468
instances, mean 92.0 tokens, 24% full rows) and at seq 512 (32,628 instances, mean 105.2: lead
sections are short documents), kept here as histograms so that a GPU machine needs no data.
`--lengths FILE` takes any corpus's lengths instead (whitespace-separated integers, e.g.
from a shard's `num_tokens` column); `--lengths full` makes every sequence seq_len long.
MLM targets per sequence as Google's `create_pretraining_data.py`: 15% of the non-special
tokens, at least 1, at most max_predictions.

Torch and `pipeline.packing` (pure Python) only: runs where only torch is installed.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from jobs.config import ConfigError
from model.packing import cu_seqlens_from_position_ids
from pipeline.packing import pack_rows

# seq_len -> (bucket width, instances exactly seq_len long, instances per bucket of the rest:
# bucket k holds lengths k*width+1 .. (k+1)*width, drawn uniformly within it)
WIKI_LENGTHS = {
    128: (8, 8568, (0, 0, 26, 304, 924, 1700, 2358, 2672, 2831, 2802, 2728, 2573, 2424,
                    2129, 1967, 1462)),
    512: (32, 1, (246, 6175, 9727, 7801, 4657, 2347, 1041, 373, 166, 57, 22, 8, 4, 3, 0,
                  0)),
}


def sample_lengths(spec: str, seq_len: int, n: int, seed: int) -> list[int]:
    """n sequence lengths in [8, seq_len]: "full", "wiki" (the histogram of the closest
    prepared length, scaled to seq_len) or a file of lengths (sampled with replacement)."""
    rng = random.Random(seed)
    if spec == "full":
        return [seq_len] * n
    if spec == "wiki":
        base = min(WIKI_LENGTHS, key=lambda L: abs(L - seq_len))
        width, full, counts = WIKI_LENGTHS[base]
        buckets = [-1, *range(len(counts))]  # -1: exactly `base` long
        picks = rng.choices(buckets, weights=[full, *counts], k=n)
        out = [base if k < 0 else rng.randint(k * width + 1, (k + 1) * width) for k in picks]
        return [max(8, min(seq_len, round(x * seq_len / base))) for x in out]
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--lengths {spec}: not 'full', 'wiki' or a file of lengths")
    try:
        values = [int(x) for x in path.read_text().split()]
    except ValueError:
        raise ConfigError(f"--lengths {spec}: holds something other than integers") from None
    if not values or min(values) < 8 or max(values) > seq_len:
        raise ConfigError(f"--lengths {spec}: lengths must lie in 8..{seq_len} (--seq-len)")
    return [rng.choice(values) for _ in range(n)]


def sequences(lengths: list[int], vocab_size: int, max_predictions: int, seed: int) -> list:
    """Random [CLS] A [SEP] B [SEP] sequences of these lengths: (ids, types, mlm positions,
    mlm ids, nsp label) each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, vocab_size, (n,), generator=g)
        ids[0] = 2
        types = torch.zeros(n, dtype=torch.long)
        types[n // 2:] = 1
        p = max(1, min(max_predictions, round(0.15 * (n - 3))))
        pos = (torch.randperm(n - 2, generator=g)[:p] + 1).sort().values  # never [CLS], last
        out.append((ids, types, pos, torch.randint(5, vocab_size, (p,), generator=g),
                    int(torch.randint(0, 2, (1,), generator=g))))
    return out


def _pad(rows: list[torch.Tensor], fill: int) -> torch.Tensor:
    """Rows padded with `fill` to the longest."""
    return pad_sequence(rows, batch_first=True, padding_value=fill)


def layout(seqs: list, packed: bool, seq_len: int) -> dict:
    """The model's inputs for these sequences: one per row padded to the longest, or packed
    into rows of seq_len (position ids, cls_positions, (R, S) NSP labels, cu_seqlens)."""
    groups = pack_rows([len(s[0]) for s in seqs], seq_len) if packed \
        else [[i] for i in range(len(seqs))]
    cols = {k: [] for k in ("ids", "types", "pos", "mlm_pos", "mlm_ids", "cls", "nsp")}
    for members in groups:
        parts, offset = {k: [] for k in cols}, 0
        for i in members:
            ids, types, mpos, mids, nsp = seqs[i]
            for k, v in (("ids", ids), ("types", types), ("pos", torch.arange(len(ids))),
                         ("mlm_pos", mpos + offset), ("mlm_ids", mids),
                         ("cls", torch.tensor([offset])), ("nsp", torch.tensor([nsp]))):
                parts[k].append(v)
            offset += len(ids)
        for k in cols:
            cols[k].append(torch.cat(parts[k]))
    batch = dict(input_ids=_pad(cols["ids"], 0),
                 attention_mask=_pad([torch.ones_like(r) for r in cols["ids"]], 0),
                 token_type_ids=_pad(cols["types"], 0),
                 masked_lm_positions=_pad(cols["mlm_pos"], 0),
                 masked_lm_ids=_pad(cols["mlm_ids"], -100))
    if not packed:
        batch["next_sentence_label"] = torch.cat(cols["nsp"])
        return batch
    batch.update(position_ids=_pad(cols["pos"], 0), cls_positions=_pad(cols["cls"], -1),
                 next_sentence_label=_pad(cols["nsp"], -100))
    batch["cu_seqlens"], batch["max_seqlen"] = cu_seqlens_from_position_ids(
        batch["position_ids"], batch["attention_mask"])
    return batch


def hf_labels(batch: dict) -> dict:
    """A padded batch with transformers' MLM labels (B, T), -100 where nothing is predicted."""
    B, T = batch["input_ids"].shape
    labels = torch.full((B, T), -100, dtype=torch.long)
    valid = batch["masked_lm_ids"] != -100
    rows = torch.arange(B)[:, None].expand_as(valid)
    labels[rows[valid], batch["masked_lm_positions"][valid]] = batch["masked_lm_ids"][valid]
    return {k: v for k, v in batch.items() if not k.startswith("masked_lm")} | {"labels": labels}
