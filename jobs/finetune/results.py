"""What a workflow reports: both sides' evaluation over seeds, and its headline metrics.

- `evaluation_models(finetune_result)`: the models the evaluate stage scores, (side, seed,
  model URI) for every seed's model of each side (`bertpipe finetune --seeds/--baseline`
  logs them all); empty for a plain fine-tune (then the stage scores its one model).
- `combine(results, metric)`: the per-seed evaluations of both sides as one stage result:
  every metric's mean over the pretrained side's seeds (and `_std`), the scratch side's task
  metric, and the seed-paired `gain_over_scratch` (`jobs.finetune.compare`).
- `headline(stages)`: the numbers that say whether the workflow's pretraining helped, flat,
  for the parent MLflow run (the runs table compares workflows at a glance): final held-out
  MLM accuracy and context gain against the unigram baseline, each task's dev and evaluated
  metric and gain over scratch, the probe's accuracy and gain.
Pure Python: never trains, evaluates or logs itself.
"""
from __future__ import annotations

from jobs.finetune.compare import aggregate, mean_std, paired_gain

PRETRAIN_KEYS = ("eval_mlm_accuracy", "eval_mlm_loss", "eval_context_gain",
                 "eval_mlm_accuracy_over_unigram", "mlm_accuracy", "mlm_loss", "context_gain")


def evaluation_models(result: dict | None) -> list[tuple[str, int, str]]:
    """(side, seed, model URI) of every kept model of a fine-tune result, pretrained first."""
    if not result:
        return []
    out = []
    for side, part in (("pretrained", result), ("scratch", result.get("scratch") or {})):
        for m in part.get("models") or []:
            out.append((side, int(m["seed"]), m.get("model_uri") or m["checkpoint"]))
    return out


def combine(results: dict[str, dict[int, dict]], metric: str) -> dict:
    """{side: {seed: evaluate summary}} -> the stage's result (see the module docstring)."""
    pre = {seed: r["metrics"] for seed, r in sorted(results["pretrained"].items())}
    agg = aggregate(pre)
    metrics = {}
    for key in next(iter(pre.values())):
        if f"{key}_mean" in agg:
            metrics[key], metrics[f"{key}_std"] = agg[f"{key}_mean"], agg[f"{key}_std"]
    out = {"metric": metric, "seeds": sorted(pre), "pretrained": {str(k): v for k, v in pre.items()},
           "runs": [{"side": side, "seed": seed, "run_id": r.get("run_id"), "model": r.get("model")}
                    for side, by_seed in results.items() for seed, r in sorted(by_seed.items())]}
    if results.get("scratch"):
        scratch = {seed: r["metrics"] for seed, r in sorted(results["scratch"].items())}
        mean, std = mean_std([m[metric] for m in scratch.values()])
        gain = paired_gain({s: m[metric] for s, m in pre.items()},
                           {s: m[metric] for s, m in scratch.items()}, metric)
        metrics.update({f"scratch_{metric}": mean, f"scratch_{metric}_std": std})
        if gain:
            metrics.update(gain_over_scratch=gain["mean"], gain_over_scratch_std=gain["std"])
            out["gains"] = {str(k): v for k, v in gain["values"].items()}
        out["scratch"] = {str(k): v for k, v in scratch.items()}  # as JSON markers keep them
    out["metrics"] = metrics
    return out


def headline(stages: list[dict]) -> dict[str, float]:
    """Flat metrics for the workflow's parent run, from its stages' results (ran or skipped)."""
    out: dict[str, float] = {}
    for s in stages:
        name, m = s.get("stage", ""), s.get("metrics") or {}
        if name.startswith("pretrain"):  # phase 2, after phase 1, has the last word
            out.update({f"pretrain_{k}": m[k] for k in PRETRAIN_KEYS if k in m})
            unigram = s.get("unigram") or {}
            if "top1" in unigram:
                out.update(pretrain_unigram_mlm_accuracy=unigram["top1"],
                           pretrain_unigram_mlm_loss=unigram["loss"])
        elif name.startswith(("finetune", "evaluate")):
            task, metric = s.get("task"), s.get("metric")
            if not task or not metric or metric not in m and f"dev_{metric}" not in m:
                continue
            if name.startswith("finetune"):
                prefix = f"finetune_{task}_dev"
                value = m.get(f"dev_{metric}_mean", m.get(f"dev_{metric}"))
            else:
                prefix, value = f"evaluate_{task}", m[metric]
            out.setdefault(f"{prefix}_{metric}", value)
            for key in (f"{metric}_std", f"dev_{metric}_std", f"scratch_{metric}",
                        f"scratch_{metric}_std", f"scratch_dev_{metric}",
                        f"scratch_dev_{metric}_std", "gain_over_scratch",
                        "gain_over_scratch_std"):
                if key in m:
                    out.setdefault(f"{prefix}_{key.replace('dev_', '')}", m[key])
        elif name.startswith("probe"):
            for key in ("pretrained_test_accuracy", "pretrained_dev_accuracy",
                        "test_gain_over_scratch", "dev_gain_over_scratch"):
                if key in m:
                    out.setdefault(f"probe_{key.removeprefix('pretrained_')}", m[key])
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}
