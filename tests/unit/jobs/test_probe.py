"""The linear probe: the logistic regression against scikit-learn's, the penalty picked on
dev, the frozen features (`bertpipe probe` end to end: tests/integration/test_baseline.py)."""
from __future__ import annotations

import numpy as np
import torch

from jobs.probe import features, fit_logistic, probe
from model import BertConfig, BertModel
from pipeline.tasks.features import Features


def _blobs(n: int, seed: int, d: int = 6, k: int = 3):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(k, d)) * 1.5
    y = rng.integers(0, k, size=n)
    return centers[y] + rng.normal(size=(n, d)), y


def test_the_logistic_regression_equals_scikit_learns_multinomial_lbfgs():
    from sklearn.linear_model import LogisticRegression
    x, y = _blobs(300, 1)
    decay = 0.01
    W, b = fit_logistic(x, y, 3, decay, max_iter=1000)
    # sklearn minimizes C * sum(CE) + |W|^2 / 2, i.e. mean(CE) + |W|^2 / (2 C n)
    ref = LogisticRegression(C=1 / (decay * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    logits = x @ W + b
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    np.testing.assert_allclose(ours, ref.predict_proba(x), atol=1e-4)


def test_the_penalty_is_picked_on_dev_and_scored_once_on_test():
    train, dev, test = _blobs(60, 1), _blobs(200, 2), _blobs(200, 3)
    got = probe(train, dev, test, 3, [1e-4, 1.0, 100.0])
    assert got["weight_decay"] in (1e-4, 1.0) and got["dev_accuracy"] > 0.8
    assert got["test_accuracy"] > 0.8
    # a penalty so large the weights vanish predicts one class: never picked over a real fit
    assert probe(train, dev, None, 3, [1e4])["dev_accuracy"] < 0.5
    assert "test_accuracy" not in probe(train, dev, None, 3, [1e-2])


def test_features_are_the_last_layers_cls_and_mean_over_real_tokens():
    cfg = BertConfig.from_preset("bert-tiny", vocab_size=50)
    torch.manual_seed(0)
    enc = BertModel(cfg).eval()
    ids = [np.array([2, 10, 11, 3]), np.array([2, 12, 3])]
    data = Features({"input_ids": ids, "token_type_ids": [np.zeros_like(i) for i in ids],
                     "attention_mask": [np.ones_like(i) for i in ids], "labels": [0, 1]},
                    np.arange(2), 2)
    got = features(enc, data, batch_size=2)
    H = cfg.hidden_size
    for i, row in enumerate(ids):  # alone, unpadded: the padding must change nothing
        with torch.no_grad():
            h = enc(torch.tensor(row)[None]).last_hidden_state[0]
        np.testing.assert_allclose(got[i, :H], h[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(got[i, H:], h.mean(0).numpy(), atol=1e-5)
