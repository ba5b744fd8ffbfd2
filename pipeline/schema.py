"""The shard contract between the pipeline and training (DESIGN.md, "Shard contract").

One row per instance, unpadded. Token columns are uint16 while the vocab fits, else int32.
Dynamic masking (`prepare --masking dynamic`) writes the same columns with the instances
unmasked and no predictions; with whole-word masking it adds `word_starts` (1 where a
masking group begins, per token), which the loader's masker needs.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
COLUMNS = ("input_ids", "segment_b_start", "masked_lm_positions", "masked_lm_ids",
           "next_sentence_label", "num_tokens")


def token_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 65536 else pa.int32()


def instance_schema(vocab_size: int, word_starts: bool = False) -> pa.Schema:
    tok = token_type(vocab_size)
    schema = pa.schema([
        pa.field("input_ids", pa.list_(tok), nullable=False),
        pa.field("segment_b_start", pa.uint16(), nullable=False),
        pa.field("masked_lm_positions", pa.list_(pa.uint16()), nullable=False),
        pa.field("masked_lm_ids", pa.list_(tok), nullable=False),
        pa.field("next_sentence_label", pa.int8(), nullable=False),
        pa.field("num_tokens", pa.uint16(), nullable=False),
    ])
    if word_starts:
        schema = schema.append(pa.field("word_starts", pa.list_(pa.uint8()), nullable=False))
    return schema


def length_bin(num_tokens, bin_size: int):
    """Bin index of a row (works on ints and numpy arrays); one bin when bin_size is 0."""
    if bin_size <= 0:
        return num_tokens * 0
    return (num_tokens - 1) // bin_size
