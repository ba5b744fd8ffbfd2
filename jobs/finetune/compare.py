"""Seeds and the from-scratch baseline: each side's pick of the grid, mean ± std, paired gains.

A fine-tune runs settings (its search grid) x seeds x sides: `pretrained`, plus `scratch`
(the same architecture from random initialization) with `--baseline scratch`. Each side
picks its own setting, the one whose dev metric averaged over the seeds is best, so the
baseline is compared at its best rate, not at the pretrained model's. At that setting a side
reports every seed's dev metric, their mean and sample standard deviation (ddof 1; 0 for one
seed); its best seed's model is the side's model. The gain over scratch pairs seeds (seed k
pretrained - seed k scratch, each at its side's setting), oriented so that a positive gain
means the pretrained model is better (for mse, lower is better). The workflow's evaluate
stage aggregates test metrics with the same functions. Pure Python: never trains or logs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from jobs.finetune.predict import goodness

SETTING_KEYS = ("learning_rate", "batch_size", "epochs")


def mean_std(values) -> tuple[float, float]:
    """(mean, sample standard deviation) of a non-empty list; std 0 for one value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def setting_of(trial: dict) -> tuple:
    return tuple(trial[k] for k in SETTING_KEYS)


@dataclass
class Side:
    """One side's pick: its setting, and the fits (one per seed) trained with it."""
    side: str
    setting: dict
    fits: dict[int, dict]
    """seed -> the fit's outcome ({"name", "trial", "run_id", "result", "checkpoint"})"""
    metric: str

    def value(self, seed: int) -> float:
        return float(self.fits[seed]["result"]["best"][self.metric])

    @property
    def values(self) -> dict[int, float]:
        return {seed: self.value(seed) for seed in sorted(self.fits)}

    @property
    def best(self) -> dict:
        """The fit of the best seed (its model is the side's model)."""
        seed = max(sorted(self.fits), key=lambda s: goodness(self.metric, self.value(s)))
        return self.fits[seed]

    def summary(self) -> dict:
        mean, std = mean_std(self.values.values())
        return {"setting": self.setting, "seeds": sorted(self.fits),
                f"dev_{self.metric}": self.values, "mean": mean, "std": std}


def pick(outcomes: list[dict], metric: str, side: str = "pretrained") -> Side | None:
    """`side`'s setting with the best mean dev metric over its seeds (the first on a tie);
    None when none of its fits produced dev metrics."""
    groups: dict[tuple, dict[int, dict]] = {}
    for o in outcomes:
        trial = o["trial"]
        if trial.get("init", "pretrained") != side or "error" in o \
                or not (o.get("result") or {}).get("best"):
            continue
        groups.setdefault(setting_of(trial), {})[trial.get("seed", 0)] = o
    if not groups:
        return None

    def score(fits: dict[int, dict]) -> float:
        return mean_std([goodness(metric, o["result"]["best"][metric])
                         for o in fits.values()])[0]
    setting = max(groups, key=lambda k: score(groups[k]))
    return Side(side, dict(zip(SETTING_KEYS, setting)), groups[setting], metric)


def paired_gain(pretrained: dict[int, float], scratch: dict[int, float],
                metric: str) -> dict | None:
    """Seed-paired gains of pretrained over scratch: {"mean", "std", "values": {seed: gain}}
    over the seeds both sides have; None when they share none."""
    seeds = sorted(set(pretrained) & set(scratch))
    if not seeds:
        return None
    gains = {s: goodness(metric, pretrained[s]) - goodness(metric, scratch[s]) for s in seeds}
    mean, std = mean_std(gains.values())
    return {"mean": mean, "std": std, "values": gains}


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    """Metrics of several seeds -> each metric's `_mean` and `_std` (numbers only)."""
    keys = [k for k, v in next(iter(per_seed.values())).items() if isinstance(v, (int, float))]
    out = {}
    for k in keys:
        mean, std = mean_std([m[k] for m in per_seed.values() if k in m])
        out[f"{k}_mean"], out[f"{k}_std"] = mean, std
    return out


def format_mean_std(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f} ± {std:.4f} (n={n})" if n > 1 else f"{mean:.4f}"
