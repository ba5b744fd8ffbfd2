"""`bertpipe probe` / `python -m jobs.probe`: a linear probe on a model's frozen features.

How much a pretrained encoder knows without any fine-tuning: the last layer's [CLS] vector
and its mean over the tokens (concatenated, 2H per example) of the frozen model, a
multinomial logistic regression on them (features standardized with the training set's
mean and std; L-BFGS on the full batch, bias unpenalized) with its L2 penalty picked on dev
from `--weight-decays`, then scored on dev and, when given, `--test`. With `--baseline
scratch` the same is done on the features of the same architecture at BERT's random
initialization, one per seed (`--seeds`, the draws the scratch fine-tunes start from), and
the gain (pretrained - scratch, per seed) is reported. Classification only. Runs in this
process (no Ray); one MLflow run with the dev/test accuracy of each side and the gain. The
last line of stdout is one JSON object. Never trains the encoder.

Example: bertpipe probe --model models:/wiki-bert@phase1 --train train.jsonl \
    --validation dev.jsonl --test test.jsonl --baseline scratch --seeds 3
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from jobs.config import ConfigError

DECAYS = [1e-3, 1e-2, 1e-1, 1.0]  # scikit-learn C = 1 / (decay x examples)


@dataclass
class ProbeConfig:
    PATHS = ("model", "train", "validation", "test")  # jobs.train.paths
    task: Literal["classification"] = "classification"
    """The task (classification only: single texts or pairs)"""
    model: str = ""
    """The model: an MLflow URI (models:/NAME@ALIAS, runs:/ID/PATH) or a HF BERT folder"""
    train: str = ""
    """Training data (JSONL, CSV/TSV, Parquet; local or s3://): fits the probe"""
    validation: str = ""
    """Dev data: picks the L2 penalty"""
    test: str | None = None
    """Test data: scored once with the picked probe"""
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet"] = "auto"
    """Data format (auto: from the file name)"""
    text_column: str | None = None
    """Column of the (first) text (default: text)"""
    text_pair_column: str | None = None
    """Column of the second text of a pair"""
    label_column: str | None = None
    """Column of the label (default: label)"""
    labels: list[str] | None = None
    """Label names (default: the training set's, sorted)"""
    max_seq_length: int = 128
    """Tokens per example, [CLS] and [SEP]s included"""
    max_train_examples: int | None = None
    """Use only the first N training examples"""
    weight_decays: list[float] = field(default_factory=lambda: list(DECAYS))
    """L2 penalties tried (on the mean cross-entropy); the best on dev is kept"""
    baseline: Literal["none", "scratch"] = "none"
    """scratch: also probe the same architecture at random initialization"""
    seeds: int = 1
    """Random initializations of the scratch baseline (seed, seed+1, ...)"""
    seed: int = 42
    """First seed of the scratch baseline (the same as the fine-tunes' --seed)"""
    batch_size: int = 64
    """Examples per forward pass"""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite file mlflow.db)"""
    experiment: str = "bertpipe-probe"
    """MLflow experiment"""
    run_name: str | None = None
    """MLflow run name (default: probe-MODEL-FOLDER-NAME)"""
    parent_run_id: str | None = None
    """Nest this job's MLflow run under this run (a workflow's)"""

    def validate(self) -> ProbeConfig:
        for name in ("model", "train", "validation"):
            if not getattr(self, name):
                raise ConfigError(f"no {name} given: pass --{name} "
                                  + ("URI_OR_DIR" if name == "model" else "FILE"))
        if self.seeds < 1 or self.batch_size < 1 or self.max_seq_length < 3:
            raise ConfigError("seeds and batch_size must be at least 1, max_seq_length at least 3")
        if not self.weight_decays or min(self.weight_decays) < 0:
            raise ConfigError("weight_decays: give one or more penalties >= 0")
        return self

    def finetune_config(self):
        """The same data options as a fine-tune's (its readers and featurizer are reused)."""
        from jobs.finetune.config import FinetuneConfig
        keep = {f.name for f in dataclasses.fields(FinetuneConfig)}
        return FinetuneConfig(**{k: v for k, v in dataclasses.asdict(self).items()
                                 if k in keep and k != "seeds"})


@torch.no_grad()
def features(encoder: torch.nn.Module, data, batch_size: int) -> np.ndarray:
    """(N, 2H) float64: last-layer [CLS] and mean over the real tokens, per example."""
    from jobs.finetune.predict import to_tensors
    from jobs.finetune.tasks import INPUTS
    from pipeline.tasks.features import collate
    encoder.eval()
    out = []
    for s in range(0, len(data), batch_size):
        batch = to_tensors(collate(data, np.arange(s, min(s + batch_size, len(data))), INPUTS),
                           "cpu")
        hidden = encoder(**batch).last_hidden_state                  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.cat([hidden[:, 0], mean], dim=-1).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, decay: float,
                 max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(W (D, K), b (K,)) minimizing mean cross-entropy + decay / 2 * |W|^2: L-BFGS (scipy's)
    from zero, with the exact gradient."""
    from scipy.optimize import minimize
    x = np.ascontiguousarray(x, dtype=np.float64)
    n, d = x.shape
    onehot = np.eye(num_classes)[np.asarray(y)]                   # (N, K)

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
        logits = x @ W + b                                        # (N, K)
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        err = (np.exp(logp) - onehot) / n                         # d(mean CE)/d(logits)
        loss = -(onehot * logp).sum() / n + decay / 2 * (W * W).sum()
        return loss, np.concatenate([(x.T @ err + decay * W).ravel(), err.sum(0)])
    theta = minimize(loss_grad, np.zeros(d * num_classes + num_classes), jac=True,
                     method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-8}).x
    return theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]


def probe(train: tuple, dev: tuple, test: tuple | None, num_classes: int,
          decays: list[float]) -> dict:
    """Fit on train for each penalty, keep the best on dev (the larger penalty on a tie);
    {"weight_decay", "dev_accuracy", "test_accuracy"?}. Each of train/dev/test is (X, y)."""
    mean, std = train[0].mean(0), train[0].std(0) + 1e-8

    def accuracy(part, W, b) -> float:
        return float((((part[0] - mean) / std @ W + b).argmax(-1) == part[1]).mean())
    best = None
    for decay in sorted(decays, reverse=True):
        W, b = fit_logistic((train[0] - mean) / std, train[1], num_classes, decay)
        dev_acc = accuracy(dev, W, b)
        if best is None or dev_acc > best[0]:
            best = (dev_acc, decay, W, b)
    out = {"weight_decay": best[1], "dev_accuracy": best[0]}
    if test is not None:
        out["test_accuracy"] = accuracy(test, best[2], best[3])
    return out


def run(cfg: ProbeConfig) -> dict:
    from jobs.finetune.compare import mean_std, paired_gain
    from jobs.finetune.driver import load_data
    from jobs.finetune.tasks import featurize, read_examples, tokenizer_for
    from jobs.tracking import PARENT_TAG, Tracker, default_tracking_uri
    from jobs.train.sources import resolve_model
    from model import BertConfig, BertModel
    from model.hf import load
    cfg.validate()
    tracking_uri = cfg.tracking_uri or default_tracking_uri()
    source = resolve_model(cfg.model, tracking_uri)
    spec, data = load_data(cfg.finetune_config(), source)
    if spec.regression:
        raise ConfigError("probe: classification labels only (the training labels are numbers)")
    parts = {"train": data["train"], "dev": data["dev"]}
    if cfg.test:
        tok, vocab, _ = tokenizer_for(source.hf_dir)
        rows = read_examples(spec, cfg.test, cfg.format)
        parts["test"] = featurize(spec, tok, vocab, rows, cfg.test, training=False)
    labels = {k: np.asarray(v.columns["labels"]) for k, v in parts.items()}
    n = len(spec.labels)

    def probe_encoder(encoder) -> dict:
        X = {k: features(encoder, v, cfg.batch_size) for k, v in parts.items()}
        return probe((X["train"], labels["train"]), (X["dev"], labels["dev"]),
                     (X["test"], labels["test"]) if "test" in X else None, n,
                     cfg.weight_decays)

    result = {"pretrained": probe_encoder(load(source.hf_dir, cls=BertModel))}
    log(f"pretrained: {result['pretrained']}")
    if cfg.baseline == "scratch":
        config = BertConfig.from_json(source.hf_dir / "config.json")
        result["scratch"] = {}
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            torch.manual_seed(seed)  # the encoder a scratch fine-tune of this seed starts from
            result["scratch"][str(seed)] = probe_encoder(BertModel(config))
            log(f"scratch seed {seed}: {result['scratch'][str(seed)]}")
    metrics = {f"pretrained_{k}": v for k, v in result["pretrained"].items()}
    for split in ("dev", "test"):
        key = f"{split}_accuracy"
        if "scratch" not in result or key not in result["pretrained"]:
            continue
        scratch = {int(s): r[key] for s, r in result["scratch"].items()}
        mean, std = mean_std(scratch.values())
        # the pretrained probe is deterministic: the same value paired with every seed
        gain = paired_gain({s: result["pretrained"][key] for s in scratch}, scratch, "accuracy")
        metrics.update({f"scratch_{key}_mean": mean, f"scratch_{key}_std": std,
                        f"{split}_gain_over_scratch": gain["mean"],
                        f"{split}_gain_over_scratch_std": gain["std"]})
    run_name = cfg.run_name or f"probe-{source.hf_dir.name}"
    tags = {"bertpipe.job": "probe", "bertpipe.task": spec.task, **source.tags()}
    if cfg.parent_run_id:
        tags[PARENT_TAG] = cfg.parent_run_id
    tracker = Tracker(tracking_uri, cfg.experiment, run_name, tags)
    tracker.open({**dataclasses.asdict(cfg), "labels": spec.labels,
                  "train_examples": len(parts["train"])})
    tracker.log_metrics(metrics, step=0)
    tracker.finish("FINISHED")
    return {"run_id": tracker.run_id, "run_name": run_name, "model": source.uri,
            "metrics": metrics, **result}


def log(msg: str) -> None:
    print(f"[probe] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    from jobs.cli import main
    sys.exit(main(["probe", *sys.argv[1:]]))
