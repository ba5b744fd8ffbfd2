"""From a fine-tuned model and features to predictions and metrics, the same for every caller.

`infer` runs the model over some features (sorted by length so batches pad little) and
returns raw per-feature outputs: logits, token predictions, or QA's best spans
(`model.best_spans`). Those lists concatenate across Ray Train workers, so each worker infers
its own slice of the dev set. `score` turns the raw outputs of all features into one
prediction per example and the task's metrics (`jobs.finetune.metrics`); for SQuAD 2.0 it also
picks the no-answer threshold on this data (`tune_threshold`) or applies the model's.
The fine-tune loop (dev every `eval_every` epochs) and `bertpipe evaluate` both use these two
functions.
Never starts Ray or MLflow.
"""
from __future__ import annotations

import numpy as np
import torch

from jobs.config import ConfigError
from jobs.finetune import metrics as M
from jobs.finetune.tasks import INPUTS, TaskSpec, word_tags
from model import best_spans
from pipeline.tasks.features import Features, collate
from pipeline.tasks.squad import context_mask, decode

METRICS = {
    "classification": ("accuracy", "f1", "macro_f1", "mcc"),
    "regression": ("pearson", "spearman", "mse"),
    "token-classification": ("f1", "precision", "recall", "accuracy"),
    "question-answering": ("f1", "exact_match"),
    "multiple-choice": ("accuracy",),
}


LOWER_IS_BETTER = ("mse",)


def goodness(metric: str, value: float) -> float:
    """A value to maximize when picking the best epoch or trial by `metric`."""
    return -value if metric in LOWER_IS_BETTER else value


def check_metric(spec: TaskSpec) -> None:
    kind = "regression" if spec.regression else spec.task
    if spec.metric not in METRICS[kind]:
        raise ConfigError(f"metric {spec.metric!r} is not computed for {kind} "
                          f"(one of: {', '.join(METRICS[kind])})")


def to_tensors(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    """int64 / float32 tensors on `device`; to a GPU pinned and copied without blocking (a
    copy from pageable memory makes the host wait for the device's queued work)."""
    cuda = torch.device(device).type == "cuda"
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        t = t.float() if t.is_floating_point() else t.long()
        out[k] = (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)
    return out


@torch.no_grad()
def infer(net: torch.nn.Module, spec: TaskSpec, features: Features, idx, batch_size: int,
          device, autocast_dtype=None) -> dict[str, list]:
    """Raw outputs for features `idx`, in that order: lists with one entry per feature."""
    idx = np.asarray(list(idx), dtype=np.int64)
    lengths = np.array([np.shape(features.columns["input_ids"][i])[-1] for i in idx])
    order = np.argsort(-lengths, kind="stable")  # longest first: similar lengths per batch
    raw: dict[str, list] = {}
    was_training = net.training
    net.eval()
    try:
        for s in range(0, len(order), batch_size):
            chunk = idx[order[s:s + batch_size]]
            batch = to_tensors(collate(features, chunk, INPUTS), device)
            with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                out = net(**batch)
            for k, v in _outputs(spec, features, chunk, batch, out).items():
                raw.setdefault(k, []).extend(v)
    finally:
        net.train(was_training)
    unsort = np.empty_like(order)
    unsort[order] = np.arange(len(order))
    return {k: [v[i] for i in unsort] for k, v in raw.items()}


def _outputs(spec: TaskSpec, features: Features, chunk, batch, out) -> dict[str, list]:
    if spec.task == "question-answering":
        width = batch["input_ids"].shape[1]
        mask = torch.from_numpy(context_mask(features, chunk, width)).to(out.start_logits.device)
        start, end, score, null = best_spans(out.start_logits.float(), out.end_logits.float(),
                                             mask, spec.max_answer_length)
        return {k: list(v.cpu().numpy()) for k, v in
                (("start", start), ("end", end), ("score", score), ("null", null))}
    logits = out.logits.float().cpu().numpy()
    if spec.task == "token-classification":
        n = batch["attention_mask"].sum(1).cpu().numpy()
        return {"tags": [row.argmax(-1)[:k] for row, k in zip(logits, n)]}
    return {"logits": list(logits)}


def merge(parts: list[dict[str, list]]) -> dict[str, list]:
    """Raw outputs of consecutive slices (one per worker) as one."""
    out: dict[str, list] = {}
    for p in parts:
        for k, v in p.items():
            out.setdefault(k, []).extend(v)
    return out


def score(spec: TaskSpec, rows: list[dict], features: Features, raw: dict[str, list],
          tune_threshold: bool = False) -> tuple[list[dict], dict]:
    """(one prediction per example, metrics) from the raw outputs of every feature."""
    if spec.task == "question-answering":
        return _score_squad(spec, rows, features, raw, tune_threshold)
    if spec.task == "token-classification":
        return _score_tokens(spec, rows, features, raw)
    logits = np.stack(raw["logits"]) if raw.get("logits") else np.zeros((0, 1))
    gold = np.asarray(features.columns["labels"])
    if spec.task == "classification" and spec.regression:
        pred = logits[:, 0]
        metrics = {"pearson": M.pearson(pred, gold), "spearman": M.spearman(pred, gold),
                   "mse": float(np.mean((pred - gold) ** 2)) if len(gold) else 0.0}
        return [{"prediction": float(p)} for p in pred], metrics
    pred = logits.argmax(-1)
    metrics = {"accuracy": M.accuracy(pred, gold)}
    if spec.task == "multiple-choice":
        return [{"prediction": int(p)} for p in pred], metrics
    n = len(spec.labels)
    metrics.update(macro_f1=M.macro_f1(pred, gold, n), mcc=M.matthews_corrcoef(pred, gold, n))
    if n == 2:
        metrics["f1"] = M.binary_f1(pred, gold)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return [{"prediction": spec.labels[p], "score": float(probs[i, p])}
            for i, p in enumerate(pred)], metrics


def _score_tokens(spec, rows, features, raw) -> tuple[list[dict], dict]:
    gold = word_tags(spec, rows, "data")
    pred = []
    for tags, starts, words in zip(raw["tags"], features.meta["word_starts"], gold):
        # a word's prediction is its first piece's; words cut off by max_seq_length get O
        pred.append([spec.labels[tags[s]] if s >= 0 else "O" for s in starts[:len(words)]])
    metrics = M.entity_scores(pred, gold)
    flat_p = [t for s in pred for t in s]
    flat_g = [t for s in gold for t in s]
    metrics["accuracy"] = float(np.mean([p == g for p, g in zip(flat_p, flat_g)])) \
        if flat_g else 0.0
    return [{"tokens": list(r[spec.text_column]), "prediction": p}
            for r, p in zip(rows, pred)], metrics


def _score_squad(spec, rows, features, raw, tune_threshold) -> tuple[list[dict], dict]:
    texts, diff = decode(features, rows, np.asarray(raw["start"]), np.asarray(raw["end"]),
                         np.asarray(raw["score"]), np.asarray(raw["null"]))
    golds = [[a["text"] for a in r["answers"]] for r in rows]
    metrics: dict = {}
    threshold = spec.null_threshold
    if spec.version_2_with_negative:
        answered = [M.squad_scores(t, g)[1] for t, g in zip(texts, golds)]
        unanswered = [M.squad_scores("", g)[1] for g in golds]
        best, best_threshold = M.best_null_threshold(diff, answered, unanswered)
        metrics.update(best_f1=best, best_f1_threshold=best_threshold)
        if tune_threshold:
            threshold = best_threshold
        metrics["null_threshold"] = threshold
        texts = [t if d <= threshold else "" for t, d in zip(texts, diff)]
    metrics.update(M.squad_metrics(texts, golds))
    return [{"id": r["id"], "prediction": t, "null_diff": float(d) if np.isfinite(d) else None}
            for r, t, d in zip(rows, texts, diff)], metrics
