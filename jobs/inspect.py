"""`bertpipe inspect OUTPUT`: what a `prepare` output holds, decoded and counted.

Prints K decoded instances (tokens with their masks, `[MASK]{original}`, the segment
boundary, NotNext) and statistics over every shard: instances, tokens, the masked share and
how the masked tokens were replaced ([MASK] / random / kept), NotNext, short rows (under 90%
of max_seq_length), mean length, the length histogram, and the padding a batch size costs
(the loader's batches of epoch N on one worker, `PretrainLoader.padding`: B rows of one
length bin padded to their longest row, or with `--packing` packed rows). Dynamic outputs are masked as the loader masks them in epoch N
(`--epoch`); static outputs hold their masks, so the epoch changes nothing there.
`--json` ends the output with one JSON object; its `masks_sha256` is the sha256 of, shard by
shard in manifest order, the per-instance prediction counts (uint32 LE), then all masked
positions (uint16 LE), then all labels (int32 LE): equal digests, equal masks.

Reads shards one at a time (memory: one shard). Never writes anything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np

from pipeline.dataset import ShardData, open_dataset, read_shard
from pipeline.dynamic import masker_for
from pipeline.tokenizer import VocabInfo, load_vocab


class _Totals:
    """Running sums over shards."""

    def __init__(self, max_seq_length: int, hist_width: int):
        self.max_len, self.width = max_seq_length, hist_width
        self.instances = self.tokens = self.predictions = 0
        self.mask = self.kept = self.not_next = self.short = 0
        self.hist = np.zeros(-(-max_seq_length // hist_width), dtype=np.int64)
        self.digest = hashlib.sha256()

    def add(self, shard: ShardData, vocab: VocabInfo) -> None:
        n = shard.num_tokens
        self.instances += shard.rows
        self.tokens += int(n.sum())
        counts = np.diff(shard.mlm_offsets)
        row = np.repeat(np.arange(shard.rows), counts)
        now = shard.ids[shard.ids_offsets[row] + shard.mlm_pos.astype(np.int64)]
        self.predictions += len(row)
        self.mask += int((now == vocab.mask_id).sum())
        self.kept += int((now == shard.mlm_ids).sum())
        self.not_next += int(shard.nsp_label.sum())
        self.short += int((n < 0.9 * self.max_len).sum())
        self.hist += np.bincount((n - 1) // self.width, minlength=len(self.hist))[:len(self.hist)]
        self.digest.update(counts.astype("<u4").tobytes())
        self.digest.update(shard.mlm_pos.astype("<u2").tobytes())
        self.digest.update(shard.mlm_ids.astype("<i4").tobytes())

    def summary(self) -> dict:
        p = max(self.predictions, 1)
        return {
            "instances": self.instances, "tokens": self.tokens,
            "masked_frac": self.predictions / max(self.tokens, 1),
            "mask_token_frac": self.mask / p,
            "random_token_frac": (self.predictions - self.mask - self.kept) / p,
            "kept_frac": self.kept / p,
            "not_next_frac": self.not_next / max(self.instances, 1),
            "short_frac": self.short / max(self.instances, 1),
            "mean_len": self.tokens / max(self.instances, 1),
            "length_hist": {f"{i * self.width + 1}-{(i + 1) * self.width}": int(c)
                            for i, c in enumerate(self.hist) if c},
            "masks_sha256": self.digest.hexdigest(),
        }


def _padding(ds, epoch: int, batch_size: int, packing: bool) -> float | None:
    """Padding of the loader's batches in `epoch` on one worker (None: no batch fits)."""
    from pipeline.errors import InputError
    from pipeline.loader import PretrainLoader
    try:
        loader = PretrainLoader(ds, ds.shards, batch_size, prefetch=False, packing=packing)
    except InputError:   # the batch is larger than every length bin
        return None
    return loader.padding(epoch, rounds=None)["padding_fraction"]


def _decode(shard: ShardData, r: int, vocab: list[str], nsp: bool) -> list[str]:
    """One instance as text lines: A and B (or the row), masks as `shown{original}`."""
    ids = shard.ids[shard.ids_offsets[r]:shard.ids_offsets[r + 1]]
    a, b = shard.mlm_offsets[r], shard.mlm_offsets[r + 1]
    labels = dict(zip(shard.mlm_pos[a:b].tolist(), shard.mlm_ids[a:b].tolist()))
    words = [vocab[t] + (f"{{{vocab[labels[i]]}}}" if i in labels else "")
             for i, t in enumerate(ids.tolist())]
    split = int(shard.segment_b_start[r])
    label = ("NotNext" if shard.nsp_label[r] else "IsNext") if nsp else "one segment"
    lines = [f"row {r}: {len(ids)} tokens, {len(labels)} masked, {label}"]
    lines.append("  A: " + " ".join(words[:split]))
    if split < len(words):
        lines.append("  B: " + " ".join(words[split:]))
    return lines


def inspect(output: str, epoch: int = 0, show: int = 3, batch_size: int = 32,
            packing: bool = False, out=None) -> dict:
    """Print `show` decoded instances and the statistics (to `out`, default stdout); returns
    the statistics."""
    out = out or sys.stdout
    ds = open_dataset(output, "OUTPUT")
    vocab_list = load_vocab(ds.vocab_file)
    vocab = VocabInfo.from_vocab(vocab_list)
    masker = masker_for(ds)
    width = ds.bin_size or 16
    totals = _Totals(ds.max_seq_length, width)
    total_rows = sum(s.rows for s in ds.shards)
    # the instances shown: evenly spaced over the whole dataset (short and long rows)
    picks = set(np.linspace(0, total_rows - 1, num=min(show, total_rows)).astype(int).tolist()) \
        if show > 0 else set()
    mode = ds.manifest.masking.get("mode", "static")
    print(f"{output}: {len(ds.shards)} shards, {total_rows} instances, max_seq_length "
          f"{ds.max_seq_length}, {'NSP pairs' if ds.nsp else 'single segments'}, {mode} "
          f"masking" + (f" (epoch {epoch})" if masker else ""), file=out)
    first = 0
    for meta in ds.shards:
        shard = read_shard(ds, meta)
        if masker is not None:
            shard = masker.apply(shard, epoch)
        for g in sorted(p for p in picks if first <= p < first + meta.rows):
            print(f"shard {meta.index} " + "\n".join(_decode(shard, g - first, vocab_list,
                                                              ds.nsp)), file=out)
        totals.add(shard, vocab)
        first += meta.rows
    stats = {"output": output, "masking": mode, "epoch": epoch if masker else None,
             "batch_size": batch_size, "packing": packing, **totals.summary(),
             "padding_frac": _padding(ds, epoch, batch_size, packing)}
    print(f"instances {stats['instances']}, tokens {stats['tokens']}, mean length "
          f"{stats['mean_len']:.1f}, short (< 90% of {ds.max_seq_length}) "
          f"{stats['short_frac']:.1%}, NotNext {stats['not_next_frac']:.1%}", file=out)
    print(f"masked {stats['masked_frac']:.2%} of tokens: [MASK] {stats['mask_token_frac']:.1%}, "
          f"random {stats['random_token_frac']:.1%}, kept {stats['kept_frac']:.1%}", file=out)
    pad = stats["padding_frac"]
    print(f"padding at batch size {batch_size}{', packed' if packing else ''}: "
          + ("no batch fits" if pad is None else f"{pad:.1%}"), file=out)
    top = max(stats["length_hist"].values(), default=1)
    for span, count in stats["length_hist"].items():
        print(f"  {span:>9} {count:>9} {'#' * max(1, round(40 * count / top))}", file=out)
    print(f"masks sha256 {stats['masks_sha256']}", file=out)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertpipe inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="a `bertpipe prepare` output directory (local or s3://)")
    p.add_argument("--epoch", type=int, default=0,
                   help="the epoch whose masks a dynamic output shows (default 0)")
    p.add_argument("--show", type=int, default=3, help="instances to decode (default 3)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="micro-batch size of the padding figure (default 32)")
    p.add_argument("--packing", action="store_true", help="padding of packed batches")
    p.add_argument("--json", action="store_true", help="end with the statistics as JSON")
    args = p.parse_args(argv)
    if args.epoch < 0 or args.show < 0 or args.batch_size < 1:
        p.error("--epoch and --show must be >= 0, --batch-size >= 1")
    stats = inspect(args.output, args.epoch, args.show, args.batch_size, args.packing)
    if args.json:
        print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
