"""`FinetuneConfig`: every option of `bertpipe finetune`, its checks, and the search grid.

Composed of the shared training parts (`jobs.train.config`: compute, optimization,
tracking) plus the task, its data and the search. Defaults are the BERT paper's fine-tuning
recipe (batch 32, lr 2e-5, 3 epochs, AdamW with 10% linear warmup then linear decay,
dropout 0.1). `--search paper` is the paper's grid (lr 5e-5/3e-5/2e-5 x batch 16/32 x epochs
2/3/4), `--search grid` one made of the `--search-*` lists (an axis left out keeps the
single-run value). `--seeds N` repeats every fit with N seeds, `--baseline scratch` every fit
from random initialization (`jobs.finetune.compare` picks and pairs them). Presets live in `jobs/presets/finetune-*.yaml`. Field docstrings are the
`--help` text. Never starts Ray or MLflow and never reads data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Literal

from jobs.config import ConfigError, hidden, to_yaml
from jobs.train.config import ComputeConfig, OptimConfig, TrackingConfig

TASKS = ("classification", "token-classification", "question-answering", "multiple-choice")
PAPER_GRID = {"learning_rate": [5e-5, 3e-5, 2e-5], "batch_size": [16, 32], "epochs": [2, 3, 4]}


@dataclass
class FinetuneConfig(ComputeConfig, OptimConfig, TrackingConfig):
    PATHS = ("model", "train", "validation", "storage_path", "output")  # jobs.train.paths
    task: Literal["classification", "token-classification", "question-answering",
                  "multiple-choice"] = "classification"
    """classification (single sentence or pair; regression for numeric labels),
    token-classification (BIO tags), question-answering (SQuAD v1.1/v2.0), multiple-choice
    (SWAG-style)"""
    model: str = ""
    """Pretrained model: an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH)
    or a HF BERT folder (config.json, weights, vocab.txt)"""
    train: str = ""
    """Training data: JSONL, CSV/TSV, Parquet, SQuAD JSON or CoNLL; local or s3://"""
    validation: str = ""
    """Dev data (same formats): evaluated every eval_every epochs, picks the best checkpoint
    and trial"""
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "squad", "conll"] = "auto"
    """Data format (auto: from the file name)"""
    text_column: str | None = None
    """Column of the (first) text (default: text; tokens for token-classification; sent1 for
    multiple-choice)"""
    text_pair_column: str | None = None
    """Column of the second text of a pair (classification); the ending's shared start
    (multiple-choice, e.g. sent2)"""
    label_column: str | None = None
    """Column of the label (default: label; tags for token-classification)"""
    choice_columns: list[str] | None = None
    """Multiple-choice endings: columns (default: ending0, ending1, ... or a list column
    'endings')"""
    labels: list[str] | None = None
    """Label names in output order (default: the training set's, sorted); integer labels in
    token-classification data index this list"""
    regression: bool | None = None
    """Classification as regression on one output (default: when the labels are numbers
    with fractions, as in STS-B)"""

    max_seq_length: int = 128
    """Tokens per sequence, [CLS] and [SEP]s included (longer inputs are cut)"""
    doc_stride: int = 128
    """question-answering: tokens between the starts of consecutive windows of a long context"""
    max_query_length: int = 64
    """question-answering: question tokens kept"""
    max_answer_length: int = 30
    """question-answering: longest answer span in tokens"""
    version_2_with_negative: bool | None = None
    """question-answering: SQuAD 2.0 (unanswerable questions; a no-answer threshold is tuned on
    dev). Default: when the data has unanswerable questions"""
    max_train_examples: int | None = None
    """Use only the first N training examples (quick runs)"""
    max_eval_examples: int | None = None
    """Use only the first N dev examples"""

    epochs: int = 3
    """Passes over the training data"""
    learning_rate: float = 2e-5
    """Peak learning rate (the paper picks from 5e-5, 3e-5, 2e-5 on dev)"""
    warmup_steps: float = 0.1
    """Linear warmup: a fraction of all steps (< 1) or optimizer steps (>= 1); then linear
    decay to 0"""
    batch_size: int = 32
    """Global batch in examples per optimizer step (all workers)"""
    eval_batch_size: int = 64
    """Examples per forward pass in evaluation, per worker"""
    eval_every: int = 1
    """Epochs between dev evaluations, and after the last epoch; the best checkpoint is the
    best evaluated epoch (with few training examples the dev passes can cost more than
    training)"""
    reinit_layers: int = 0
    """Re-initialize the pooler and the top N encoder layers of the pretrained model before
    fine-tuning (Zhang et al. 2021, few-sample fine-tuning: the top layers specialise to the
    pretraining task); 0 keeps every pretrained weight. The scratch baseline is random anyway"""
    seed: int = 42
    """Seed of the head's initialization, data order and dropout (the first of --seeds)"""
    seeds: int = 1
    """Repeat every fit with this many seeds (seed, seed+1, ...) and report the dev metric's
    mean and standard deviation; the setting of a search is picked by its mean over seeds"""
    baseline: Literal["none", "scratch"] = "none"
    """scratch: also train the same architecture from random initialization (BERT's init,
    same seeds, data and settings, its own pick of the search grid) as a sibling run, and
    report gain_over_scratch (pretrained - scratch, paired by seed)"""
    metric: str | None = None
    """Dev metric that picks the best epoch and trial (default: accuracy; pearson for
    regression; f1 for token-classification and question-answering)"""

    num_workers: int = 1
    """Ray Train workers per trial (0: run in this process, Ray Train's local mode)"""
    deepspeed: bool = False
    """Train through DeepSpeed (ZeRO stage below) instead of torch DDP"""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0, 1 or 2 (fine-tuned models fit on one device)"""
    log_every: int = 20
    """Steps between training-loss lines and MLflow metrics"""

    search: Literal["none", "paper", "grid"] = "none"
    """Hyperparameter search as parallel trials: paper (the BERT paper's 18-trial grid) or
    grid (the --search-* lists); the best on dev is kept and registered"""
    search_learning_rates: list[float] | None = None
    """Learning rates of the search (paper: 5e-5 3e-5 2e-5)"""
    search_batch_sizes: list[int] | None = None
    """Batch sizes of the search (paper: 16 32)"""
    search_epochs: list[int] | None = None
    """Epoch counts of the search (paper: 2 3 4)"""
    max_concurrent_trials: int | None = None
    """Trials running at once (default: as many as the cluster's CPUs and GPUs hold when the
    trials start; on an autoscaling cluster, set how many you want it to grow to)"""

    experiment: str = "bertpipe-finetune"
    """MLflow experiment"""
    model_alias: str = "best"
    """Alias set on the registered version ('latest' is reserved by MLflow)"""
    storage_path: str = "out/finetune"
    """Where Ray Train keeps each trial's best checkpoint (a shared folder or s3://)"""
    output: str | None = None
    """Also copy the best model (a HF folder) here"""
    fail_trial_learning_rate: float | None = hidden()
    """Testing: the trial with this learning rate runs out of memory at its first step (a
    stand-in for a CUDA OOM; fault tests)"""

    # -- derived values -------------------------------------------------------------
    def default_metric(self, regression: bool) -> str:
        if self.metric:
            return self.metric
        if self.task in ("token-classification", "question-answering"):
            return "f1"
        return "pearson" if regression else "accuracy"

    def trials(self) -> list[dict]:
        """Hyperparameters of each trial: one for no search, the grid's product otherwise."""
        single = {"learning_rate": [self.learning_rate], "batch_size": [self.batch_size],
                  "epochs": [self.epochs]}
        given = {"learning_rate": self.search_learning_rates,
                 "batch_size": self.search_batch_sizes, "epochs": self.search_epochs}
        if self.search == "none":
            return [{k: v[0] for k, v in single.items()}]
        base = PAPER_GRID if self.search == "paper" else single
        axes = {k: given[k] or base[k] for k in base}
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]

    def seed_list(self) -> list[int]:
        """The seeds every fit runs with: seed, seed+1, ..."""
        return [self.seed + k for k in range(self.seeds)]

    def sides(self) -> list[str]:
        """pretrained, and scratch when there is a baseline."""
        return ["pretrained"] + (["scratch"] if self.baseline == "scratch" else [])

    def validate(self) -> FinetuneConfig:
        for name in ("model", "train", "validation"):
            if not getattr(self, name):
                raise ConfigError(f"no {name} given: pass --{name} "
                                  + ("URI_OR_DIR" if name == "model" else "FILE"))
        for name in ("epochs", "batch_size", "eval_batch_size", "eval_every", "max_seq_length",
                     "doc_stride", "max_query_length", "max_answer_length", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.task == "question-answering" and self.max_seq_length <= self.max_query_length + 3:
            raise ConfigError(f"max_seq_length {self.max_seq_length} leaves no room for the "
                              f"context after max_query_length {self.max_query_length}")
        self.check_compute(min_workers=0, max_zero=2)
        self.check_optim()
        self.check_tracking()
        if self.deepspeed and self.num_workers == 0:
            raise ConfigError("deepspeed needs Ray Train workers: set num_workers >= 1")
        if self.search == "none" and (self.search_learning_rates or self.search_batch_sizes
                                      or self.search_epochs):
            raise ConfigError("--search-* lists need --search grid (or --search paper)")
        workers = max(1, self.num_workers)
        for trial in self.trials():
            if trial["batch_size"] % workers:
                raise ConfigError(f"batch_size {trial['batch_size']} is not a multiple of "
                                  f"num_workers {workers}")
            if trial["learning_rate"] <= 0 or trial["epochs"] < 1:
                raise ConfigError(f"search trial {trial}: learning rate and epochs must be "
                                  "positive")
        if self.reinit_layers < 0:
            raise ConfigError(f"reinit_layers must be 0 or more (got {self.reinit_layers})")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be at least 1 (got {self.seeds})")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError("max_concurrent_trials must be at least 1")
        return self

    def default_run_name(self) -> str:
        skip = (*self.TRACKING_KEYS, "log_every", "output", "max_concurrent_trials",
                "fail_trial_learning_rate")
        keys = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
        return f"finetune-{self.task}-{digest}"

    def to_yaml(self) -> str:
        return to_yaml(self)


def trial_name(run_name: str, trial: dict) -> str:
    return (f"{run_name}-lr{trial['learning_rate']:g}-bs{trial['batch_size']}"
            f"-ep{trial['epochs']}")


def fit_name(side_run: str, trial: dict, search: bool, seeds: int) -> str:
    """A fit's run and storage name: its side's run name, the setting when there is a search,
    the seed when there are several."""
    name = trial_name(side_run, trial) if search else side_run
    return f"{name}-seed{trial['seed']}" if seeds > 1 else name
