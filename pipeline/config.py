"""`PrepareConfig`: every option of `bertpipe prepare`, with Google's flag names and defaults.

Owned by the pipeline; the CLI builds its flags from the field docstrings. The resolved config
is recorded in the manifest, and the fields in `OUTPUT_FIELDS` decide whether an existing
output is the same job (reused) or a different one (refused without --overwrite).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.errors import InputError


@dataclass
class PrepareConfig:
    PATHS = ("input", "output", "vocab")  # jobs.train.paths
    input: list[str] = field(default_factory=list)
    """Input files, directories or globs, local or s3:// (.gz/.bz2/.zst read transparently)"""
    output: str = ""
    """Output directory (local or s3://) for the shards, vocab.txt and manifest.json"""
    format: Literal["bert", "text", "jsonl", "parquet"] = "bert"
    """bert: one sentence per line, blank line between documents; text: raw documents
    (a file or blank-line-separated block each); jsonl / parquet: one document per record"""
    text_field: str = "text"
    """JSONL field holding a document's text"""
    text_column: str = "text"
    """Parquet column holding a document's text"""
    vocab: str | None = None
    """An existing WordPiece vocab.txt (one token per line)"""
    vocab_size: int | None = None
    """Train a WordPiece vocab of this size on the corpus instead of --vocab"""
    vocab_sample_bytes: int = 200_000_000
    """Train the vocab on at most this many bytes of input text"""
    do_lower_case: bool = True
    """Lower-case and strip accents, as BERT uncased does"""
    max_seq_length: int = 128
    """Maximum tokens per instance, [CLS] and [SEP]s included"""
    max_predictions_per_seq: int = 20
    """Maximum masked-LM predictions per instance"""
    masked_lm_prob: float = 0.15
    """Fraction of tokens chosen for masked-LM prediction"""
    short_seq_prob: float = 0.1
    """Probability of a shorter target length, to reduce the pretrain/fine-tune mismatch
    (NSP pairs only: --no-nsp rows are full length, as RoBERTa's)"""
    dupe_factor: int | None = None
    """Passes over the corpus, each with different masks (Google's default: 10); default 10
    with static masking, 1 with dynamic (the loader masks anew every epoch)"""
    masking: Literal["static", "dynamic"] = "static"
    """static: masks written into the shards, one set per pass (Google); dynamic: instances
    written once, unmasked, and masked by the loader per epoch (RoBERTa)"""
    do_whole_word_mask: bool = False
    """Mask whole words (all WordPieces of a word) instead of single WordPieces"""
    word_segmenter: str | None = None
    """With --do-whole-word-mask: group the characters of a segmenter's word (Chinese):
    jieba, or MODULE:FUNCTION returning the words of a text"""
    random_seed: int = 12345
    """Seed of every random choice; same inputs + config + seed = byte-identical shards"""
    nsp: bool = True
    """Next-sentence prediction pairs (Google); --no-nsp makes RoBERTa's FULL-SENTENCES rows:
    contiguous sentences up to the length, across documents with an extra [SEP] between them"""
    doc_sentences: bool = False
    """With --no-nsp: rows never cross a document boundary (RoBERTa's DOC-SENTENCES)"""
    num_shards: int = 8
    """Number of output shards (balanced: row counts equal +-1)"""
    bin_size: int = 32
    """Width of sequence-length bins in tokens (0 = no binning)"""
    block_bytes: int = 16_000_000
    """Input bytes per shuffle block; the random next sentence comes from the same block"""
    overwrite: bool = False
    """Replace an existing output made with different inputs or options"""
    address: str | None = None
    """Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)"""
    executor: Literal["auto", "ray", "local"] = "auto"
    """auto: in this process for small inputs (below --local-max-bytes, no --address or
    RAY_ADDRESS), else Ray; ray: Ray Data tasks; local: the passes in this process, one by one"""
    local_max_bytes: int = 64_000_000
    """With --executor auto: inputs up to this many bytes run in this process (Ray's start-up
    costs more than it saves below it)"""
    split_bytes: int = 16_000_000
    """Input files larger than this are tokenized in line-aligned parts of at most this
    size, in parallel (on Ray also small enough for 4 parts per CPU; compressed files:
    parts of the decompressed text)"""

    @property
    def passes(self) -> int:
        """The resolved dupe factor: 10 for static masking, 1 for dynamic, unless given."""
        if self.dupe_factor is not None:
            return self.dupe_factor
        return 1 if self.masking == "dynamic" else 10

    def validate(self) -> "PrepareConfig":
        if not self.input:
            raise InputError("no input given: pass --input PATH [PATH ...]")
        if not self.output:
            raise InputError("no output given: pass --output DIR")
        if (self.vocab is None) == (self.vocab_size is None):
            raise InputError("pass exactly one of --vocab PATH (an existing vocab.txt) or "
                             "--vocab-size N (train one on the corpus)")
        if self.max_seq_length < 8:
            raise InputError(f"--max-seq-length {self.max_seq_length} is too small (at least 8)")
        if self.max_seq_length > 65535:
            raise InputError("--max-seq-length must fit uint16 (at most 65535)")
        if not 0 < self.masked_lm_prob < 1:
            raise InputError(f"--masked-lm-prob {self.masked_lm_prob} must be between 0 and 1")
        if not 0 <= self.short_seq_prob <= 1:
            raise InputError(f"--short-seq-prob {self.short_seq_prob} must be between 0 and 1")
        if self.dupe_factor is None:
            self.dupe_factor = self.passes
        if self.doc_sentences and self.nsp:
            raise InputError("--doc-sentences makes single-segment rows: pass it with --no-nsp")
        for name in ("dupe_factor", "num_shards", "max_predictions_per_seq", "block_bytes",
                     "split_bytes"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.bin_size < 0:
            raise InputError("--bin-size must be 0 (off) or positive")
        if self.word_segmenter is not None:
            if not self.do_whole_word_mask:
                raise InputError(f"--word-segmenter {self.word_segmenter} only shapes whole-word "
                                 "masking: add --do-whole-word-mask")
            from pipeline.segment import check_segmenter
            check_segmenter(self.word_segmenter)
        if self.vocab_size is not None and self.vocab_size < 100:
            raise InputError(f"--vocab-size {self.vocab_size} is too small (at least 100)")
        return self


# Fields that change the shards' content; the rest (where and how it runs, overwrite, output)
# do not: the same inputs and options give the same bytes however the work is split.
RUN_FIELDS = ("address", "executor", "local_max_bytes", "split_bytes", "overwrite", "output")
OUTPUT_FIELDS = tuple(f for f in PrepareConfig.__dataclass_fields__ if f not in RUN_FIELDS)
