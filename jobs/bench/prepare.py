"""`bertpipe bench prepare`: the pipeline's cost per input token against bare `tokenizers`.

On one core (CPU affinity and one Rust thread), in separate processes so each peak RSS is its
own: (1) the whole prepare job (read, normalize, split, tokenize, pair, mask, write shards),
in process (`--executor local`, dupe factor 1), on the corpus; (2) bare `tokenizers` batch
encoding of the texts of a corpus 10x larger (the corpus repeated); (3) the prepare job on
that larger corpus. Prints tokens/s, the cost ratio on the large corpus (target <= 2x) and the
peak RSS of each run (target: flat in corpus size).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _one_core():
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(kind: str, corpus: str, vocab: str, block_bytes: int) -> dict:
    _one_core()
    from pipeline.config import PrepareConfig
    from pipeline.tokenizer import build_tokenizer, load_vocab
    if kind == "tokenizers":
        texts = [json.loads(x)["text"] for x in open(corpus, encoding="utf-8")]
        tok = build_tokenizer(load_vocab(vocab), do_lower_case=True)
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(texts), 1024):
            tokens += sum(len(e.ids) for e in tok.encode_batch_fast(
                texts[i:i + 1024], add_special_tokens=False))
        elapsed = time.perf_counter() - start
        return {"tokens": tokens, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}
    from jobs.prepare import prepare
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        m = prepare(PrepareConfig(input=[corpus], output=out, format="jsonl", vocab=vocab,
                                  dupe_factor=1, num_shards=4, block_bytes=block_bytes,
                                  executor="local"))
        elapsed = time.perf_counter() - start
    return {"tokens": m["counts"]["input_tokens"], "instances": m["counts"]["instances"],
            "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}


def _run(kind, corpus, vocab, block_bytes) -> dict:
    out = subprocess.run([sys.executable, "-m", "jobs.bench.prepare", "--worker", kind,
                          "--corpus", str(corpus), "--vocab", str(vocab),
                          "--block-bytes", str(block_bytes)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench worker '{kind}' failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertpipe bench prepare", description=__doc__)
    p.add_argument("--corpus", help="JSONL corpus with a 'text' field (default: the pinned "
                                    "10k Wikipedia lead sections)")
    p.add_argument("--vocab", help="vocab.txt (default: the pinned bert-base-uncased vocab)")
    p.add_argument("--scale", type=int, default=10, help="size of the large corpus, in copies")
    p.add_argument("--block-bytes", type=int, default=8_000_000,
                   help="shuffle block size (memory is bounded by one block)")
    p.add_argument("--worker", choices=["tokenizers", "pipeline"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.corpus, args.vocab, args.block_bytes)))
        return 0
    from jobs.assets import fetch, wiki_jsonl
    corpus = Path(args.corpus) if args.corpus else wiki_jsonl()
    vocab = Path(args.vocab) if args.vocab else fetch("minilm") / "vocab.txt"
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.jsonl"
        data = corpus.read_bytes()
        with open(big, "wb") as f:
            for _ in range(args.scale):
                f.write(data)
        print(f"corpus: {corpus} ({len(data) / 1e6:.1f} MB); large: {args.scale}x", flush=True)
        small = _run("pipeline", corpus, vocab, args.block_bytes)
        bare = _run("tokenizers", big, vocab, args.block_bytes)
        large = _run("pipeline", big, vocab, args.block_bytes)
    # The cost ratio is taken on the large corpus, where one-off costs (imports, the
    # tokenizer's warm-up) are spread over enough tokens to show the cost per token.
    bare_rate = bare["tokens"] / bare["seconds"]
    rate = small["tokens"] / small["seconds"]
    large_rate = large["tokens"] / large["seconds"]
    print(f"bare tokenizers, {args.scale}x corpus:  {bare_rate:>10,.0f} tokens/s   peak RSS "
          f"{bare['peak_rss_mb']:,.0f} MB")
    print(f"prepare, {args.scale}x corpus:          {large_rate:>10,.0f} tokens/s   peak RSS "
          f"{large['peak_rss_mb']:,.0f} MB   ({large['instances']} instances)")
    print(f"prepare, 1x corpus:           {rate:>10,.0f} tokens/s   peak RSS "
          f"{small['peak_rss_mb']:,.0f} MB   ({small['instances']} instances)")
    print(f"cost ratio (pipeline / bare tokenization per input token, 1 core): "
          f"{bare_rate / large_rate:.2f}x (target <= 2x)")
    print(f"peak RSS ratio ({args.scale}x corpus / 1x): "
          f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} (target: flat)")
    print(json.dumps({"bare_tokens_per_s": round(bare_rate),
                      "pipeline_tokens_per_s": round(large_rate),
                      "cost_ratio": round(bare_rate / large_rate, 3),
                      "peak_rss_mb": round(small["peak_rss_mb"]),
                      "peak_rss_mb_large": round(large["peak_rss_mb"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
