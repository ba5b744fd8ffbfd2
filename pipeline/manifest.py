"""`manifest.json`, the typed contract between `prepare` and everything that reads its output.

`prepare` writes it last (an output without one is incomplete); the loader, the pretraining
driver and MLflow tracking read it. The JSON layout is the one `prepare` has always
written (schema version 1); unknown keys are kept in `extra`, so an older reader never
drops what a newer writer added. Never reads shards.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from pipeline.errors import InputError
from pipeline.schema import SCHEMA_VERSION


@dataclass
class VocabEntry:
    file: str = "vocab.txt"
    """The vocab next to the shards (always a copy)"""
    sha256: str = ""
    size: int = 0
    do_lower_case: bool = True


@dataclass
class InputFile:
    path: str
    size: int
    sha256: str


@dataclass
class ShardEntry:
    file: str
    rows: int
    sha256: str
    rows_per_bin: dict[str, int]
    """Length bin -> rows, bins ascending as the rows are ordered in the file"""
    tokens: int = 0
    size: int | None = None
    """Bytes of the file (None: a manifest written before sizes were recorded)"""


@dataclass
class Manifest:
    schema_version: int
    job_key: str
    """What makes two prepare runs the same job (options that shape the output, inputs, vocab)"""
    config: dict
    """The resolved PrepareConfig"""
    vocab: VocabEntry
    max_seq_length: int
    bin_size: int
    nsp: bool
    inputs: list[InputFile]
    skipped: dict
    """{"count": N, "by_reason": {reason: N}}: input left out, and why"""
    counts: dict
    """documents, sentences, input_tokens, instances, tokens, masked_tokens, random_next"""
    instances_per_bin: dict[str, int]
    shards: list[ShardEntry]
    seconds: float = 0.0
    masking: dict = field(default_factory=dict)
    """{"mode": "static" | "dynamic", "masked_lm_prob", "max_predictions_per_seq",
    "do_whole_word_mask", "seed", "word_starts"}: with "dynamic" the loader masks with these
    (`pipeline.dynamic`). Empty (and not written back) for older manifests: static"""
    extra: dict = field(default_factory=dict)
    """Keys this version does not know, kept as they were"""

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("extra"))
        if not out["masking"]:
            del out["masking"]   # an older manifest reads and writes back as it was
        for shard in out["shards"]:  # written back as it was read
            if shard["size"] is None:
                del shard["size"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest.json") -> Manifest:
        """Parse and check a manifest; a one-line InputError naming `where` if it is unfit."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where} is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{where} does not hold a manifest; re-run `bertpipe prepare`")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"{where}: schema_version {version!r}, this version reads "
                             f"{SCHEMA_VERSION}; re-run `bertpipe prepare`")
        for key in ("vocab", "max_seq_length", "shards"):
            if key not in raw:
                raise InputError(f"{where}: missing key '{key}'; re-run `bertpipe prepare`")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known}
        try:
            values.update(
                vocab=VocabEntry(**raw["vocab"]),
                inputs=[InputFile(**i) for i in raw.get("inputs", [])],
                shards=[ShardEntry(**s) for s in raw["shards"]])
            for key, default in (("job_key", ""), ("config", {}), ("bin_size", 0),
                                 ("skipped", {"count": 0, "by_reason": {}}), ("counts", {}),
                                 ("instances_per_bin", {})):
                values.setdefault(key, default)
            values.setdefault("nsp", values["config"].get("nsp", True))
            return cls(**values, extra={k: v for k, v in raw.items() if k not in known})
        except TypeError as e:
            raise InputError(f"{where}: malformed ({e}); re-run `bertpipe prepare`") from None
