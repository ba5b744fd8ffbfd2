"""`bertpipe inspect`: its statistics equal those computed here straight from the Parquet
files, for static masks and for dynamic masks of a given epoch."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.prepare import prepare
from pipeline.config import PrepareConfig
from pipeline.dynamic import MaskingSpec, mask_instances
from pipeline.tokenizer import VocabInfo
from tests.helpers import job

inspect = job("inspect")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, wiki_jsonl, bert_vocab):
    """The first 300 Wikipedia sections, prepared static (NSP, dupe 2) and dynamic
    (FULL-SENTENCES, whole words)."""
    root = tmp_path_factory.mktemp("inspect")
    src = root / "wiki.jsonl"
    src.write_text("\n".join(wiki_jsonl.read_text().splitlines()[:300]) + "\n")
    common = dict(input=[str(src)], format="jsonl", vocab=str(bert_vocab), num_shards=3,
                  max_seq_length=96, executor="local")
    prepare(PrepareConfig(output=str(root / "static"), dupe_factor=2, **common))
    prepare(PrepareConfig(output=str(root / "dynamic"), masking="dynamic", nsp=False,
                          do_whole_word_mask=True, **common))
    return root


def _run(capsys, *args) -> tuple[dict, str]:
    assert inspect([*map(str, args), "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1]), out


def _expected(path, epoch: int) -> dict:
    """The statistics from the Parquet files alone (dynamic: masked here with the manifest's
    parameters and each instance's global index)."""
    manifest = json.loads((path / "manifest.json").read_text())
    vocab = VocabInfo.from_vocab((path / "vocab.txt").read_text().splitlines())
    spec = MaskingSpec.from_manifest(manifest["masking"])
    digest = hashlib.sha256()
    n_all, labels_all, preds, mask, kept, first = [], [], 0, 0, 0, 0
    for shard in manifest["shards"]:
        t = pq.read_table(path / shard["file"])
        ids = t.column("input_ids").combine_chunks()
        tokens, offsets = ids.values.to_numpy(), ids.offsets.to_numpy().astype(np.int64)
        if spec is not None:
            starts = t.column("word_starts").combine_chunks().values.to_numpy()
            tokens, pos, orig, pred = mask_instances(
                tokens, offsets, first + np.arange(t.num_rows), epoch, spec, vocab, starts)
        else:
            col = t.column("masked_lm_positions").combine_chunks()
            pos, pred = col.values.to_numpy(), col.offsets.to_numpy()
            orig = t.column("masked_lm_ids").combine_chunks().values.to_numpy()
        now = tokens[np.repeat(offsets[:-1], np.diff(pred)) + pos.astype(np.int64)]
        preds += len(pos)
        mask += int((now == vocab.mask_id).sum())
        kept += int((now == orig).sum())
        digest.update(np.diff(pred).astype("<u4").tobytes())
        digest.update(pos.astype("<u2").tobytes())
        digest.update(orig.astype("<i4").tobytes())
        n_all.append(t.column("num_tokens").to_numpy().astype(int))
        labels_all.append(t.column("next_sentence_label").to_numpy())
        first += t.num_rows
    n, labels = np.concatenate(n_all), np.concatenate(labels_all)
    return {"instances": len(n), "tokens": int(n.sum()), "masked_frac": preds / n.sum(),
            "mask_token_frac": mask / preds, "kept_frac": kept / preds,
            "random_token_frac": 1 - (mask + kept) / preds, "not_next_frac": labels.mean(),
            "short_frac": (n < 0.9 * manifest["max_seq_length"]).mean(),
            "mean_len": n.mean(), "masks_sha256": digest.hexdigest()}


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_inspect_statistics_equal_those_computed_from_the_parquet_files(outputs, capsys, kind):
    for epoch in (0, 2):
        stats, _ = _run(capsys, outputs / kind, "--epoch", epoch, "--show", 0)
        expected = _expected(outputs / kind, epoch)
        for key, value in expected.items():
            assert stats[key] == pytest.approx(value, abs=1e-12), key
        assert 0.12 < stats["masked_frac"] < 0.16 and abs(stats["mask_token_frac"] - 0.8) < 0.05
        assert 0 <= stats["padding_frac"] < 0.5
        assert sum(stats["length_hist"].values()) == stats["instances"]
    if kind == "static":
        assert expected["not_next_frac"] > 0.4
    else:
        # FULL-SENTENCES rows end where the next whole sentence would not fit
        assert expected["not_next_frac"] == 0 and expected["mean_len"] > 0.8 * 96


def test_dynamic_masks_differ_by_epoch_static_ones_do_not(outputs, capsys):
    digests = {kind: {_run(capsys, outputs / kind, "--epoch", e, "--show", 0)[0]["masks_sha256"]
                      for e in (0, 1)} for kind in ("static", "dynamic")}
    assert len(digests["static"]) == 1 and len(digests["dynamic"]) == 2


def test_inspect_decodes_instances_with_their_masks_and_segments(outputs, capsys):
    _, out = _run(capsys, outputs / "static", "--show", 4)
    rows = [line for line in out.splitlines() if " row " in line]
    assert len(rows) == 4 and all("Next" in r for r in rows)
    assert out.count("  A: [CLS]") == 4 and out.count("  B: ") == 4
    assert "[MASK]{" in out


def test_inspect_names_a_missing_output_in_one_line(tmp_path, capsys):
    assert inspect([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no manifest.json" in err[0]
    # named as the user gave it: the positional OUTPUT, not pretrain's --data
    assert f"OUTPUT {tmp_path / 'nope'}:" in err[0] and "--data" not in err[0]
