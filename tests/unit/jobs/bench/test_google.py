"""jobs/bench/google.py, the plain-Python reference: its tokenizer gives our ids, and its
instances have the shape Google's `create_pretraining_data.py` gives them."""
from __future__ import annotations

import json

import numpy as np

from jobs.bench import google
from pipeline.tokenizer import VocabInfo, build_tokenizer, load_vocab


def test_its_python_tokenizer_gives_the_ids_of_ours(bert_vocab, wiki_jsonl):
    vocab = load_vocab(bert_vocab)
    ours = build_tokenizer(vocab, do_lower_case=True)
    texts = [json.loads(line)["text"] for line in wiki_jsonl.read_text().splitlines()[:400]]
    texts += ["Café naïve RÉSUMÉ", "北京大学 and 東京", "tab\there\x00nul\u200bzw\ufffd",
              "a$b^c~d (e) [f] {g}", "x" * 150 + " short", "don't—stop…now", ""]
    theirs = google.FullTokenizer(vocab).tokenize_lines(texts)
    assert theirs == [e.ids for e in ours.encode_batch_fast(texts, add_special_tokens=False)]


def test_instances_are_cls_a_sep_b_sep_masked_within_googles_budget():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(500)]
    info = VocabInfo.from_vocab(vocab)
    specials = google.Specials(info.cls_id, info.sep_id, info.mask_id, range(5, 505))
    rng = np.random.default_rng(0)
    docs = [[rng.integers(5, 505, int(rng.integers(3, 30))).tolist()
             for _ in range(int(rng.integers(1, 12)))] for _ in range(60)]
    instances = google.create_training_instances(docs, specials, max_seq_length=64,
                                                 dupe_factor=2)
    assert len(instances) > 100
    for inst in instances:
        t = inst.tokens
        assert len(t) <= 64 and t[0] == info.cls_id and t[-1] == info.sep_id
        assert t.count(info.sep_id) == 2 and inst.segment_ids.count(0) == t.index(3, 1) + 1
        k = min(20, max(1, round(len(t) * 0.15)))
        assert 1 <= len(inst.masked_lm_positions) <= k
        assert inst.masked_lm_positions == sorted(inst.masked_lm_positions)
        assert all(0 < p < len(t) - 1 for p in inst.masked_lm_positions)
    assert 0.4 < np.mean([i.is_random_next for i in instances]) < 0.75
    unmasked = google.create_training_instances(docs, specials, max_seq_length=64,
                                                dupe_factor=1, mask=False)
    assert all(not i.masked_lm_positions for i in unmasked)
