"""Test data: the same BERT pretraining sequences as an unpacked batch and as packed rows."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model import BertConfig
from model.packing import cu_seqlens_from_position_ids

V = 99
# transformers' own tiny BERT test size; no dropout, so train-mode steps are comparable
TINY = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
LENGTHS = (11, 5, 8, 3, 7, 13)
ROWS = ((0, 1), (2, 3, 4), (5,))  # sequences per packed row; every row ends in padding


def tiny_config(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, **overrides})


@dataclass
class Sequence:
    ids: torch.Tensor        # (n,) [CLS] A [SEP] B [SEP], ids >= 5
    types: torch.Tensor      # (n,) 0 on A, 1 on B
    mlm_pos: torch.Tensor    # (p,) positions in the sequence, never 0
    mlm_ids: torch.Tensor    # (p,)
    nsp: int


def make_sequences(lengths=LENGTHS, seed: int = 0) -> list[Sequence]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, V, (n,), generator=g)
        ids[0] = 2  # [CLS]
        types = torch.zeros(n, dtype=torch.long)
        types[n // 2:] = 1
        p = max(1, n // 4)
        pos = (torch.randperm(n - 1, generator=g)[:p] + 1).sort().values
        out.append(Sequence(ids, types, pos, torch.randint(5, V, (p,), generator=g),
                            int(torch.randint(0, 2, (1,), generator=g))))
    return out


def _pad(rows: list[torch.Tensor], width: int, fill: int) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def unpacked(seqs: list[Sequence]) -> dict:
    """One sequence per row, padded to the longest: the batch as the loader makes it today."""
    T = max(len(s.ids) for s in seqs)
    P = max(len(s.mlm_pos) for s in seqs)
    return dict(
        input_ids=_pad([s.ids for s in seqs], T, 0),
        attention_mask=_pad([torch.ones_like(s.ids) for s in seqs], T, 0),
        token_type_ids=_pad([s.types for s in seqs], T, 0),
        masked_lm_positions=_pad([s.mlm_pos for s in seqs], P, 0),
        masked_lm_ids=_pad([s.mlm_ids for s in seqs], P, -100),
        next_sentence_label=torch.tensor([s.nsp for s in seqs]))


@dataclass
class Placement:
    row: int
    offset: int   # first token of the sequence in its row
    slot: int     # index of the sequence among its row's sequences (cls_positions column)
    first_prediction: int  # index of its first MLM target among its row's


def packed(seqs: list[Sequence], rows=ROWS, pad: int = 2) -> tuple[dict, list[Placement]]:
    """The same sequences packed into rows (position ids restart at 0), `pad` padding tokens
    after the longest row; plus where each sequence landed."""
    where: list[Placement | None] = [None] * len(seqs)
    cols = {k: [] for k in ("ids", "types", "pos", "mask", "mlm_pos", "mlm_ids", "cls", "nsp")}
    for r, members in enumerate(rows):
        parts = {k: [] for k in cols}
        offset = npred = 0
        for slot, i in enumerate(members):
            s = seqs[i]
            where[i] = Placement(r, offset, slot, npred)
            parts["ids"].append(s.ids)
            parts["types"].append(s.types)
            parts["pos"].append(torch.arange(len(s.ids)))
            parts["mask"].append(torch.ones_like(s.ids))
            parts["mlm_pos"].append(s.mlm_pos + offset)  # MLM positions index the row
            parts["mlm_ids"].append(s.mlm_ids)
            parts["cls"].append(torch.tensor([offset]))
            parts["nsp"].append(torch.tensor([s.nsp]))
            offset += len(s.ids)
            npred += len(s.mlm_pos)
        for k in cols:
            cols[k].append(torch.cat(parts[k]))
    T = max(len(r) for r in cols["ids"]) + pad
    P = max(len(r) for r in cols["mlm_pos"])
    S = max(len(r) for r in cols["cls"])
    batch = dict(
        input_ids=_pad(cols["ids"], T, 0), attention_mask=_pad(cols["mask"], T, 0),
        token_type_ids=_pad(cols["types"], T, 0), position_ids=_pad(cols["pos"], T, 0),
        masked_lm_positions=_pad(cols["mlm_pos"], P, 0),
        masked_lm_ids=_pad(cols["mlm_ids"], P, -100),
        cls_positions=_pad(cols["cls"], S, -1), next_sentence_label=_pad(cols["nsp"], S, -100))
    batch["cu_seqlens"], batch["max_seqlen"] = cu_seqlens_from_position_ids(
        batch["position_ids"], batch["attention_mask"])
    return batch, where
