"""What a pretraining checkpoint holds, how it is written and how a rerun finds it.

One Ray Train checkpoint folder per save, `checkpoint-<step>`, merged by Ray from every rank:
```
deepspeed/            DeepSpeed's own files: each rank's ZeRO shard (+ model states)
trainer_state.json    step, data position (micro_batches), per-rank sample digests, metrics
hf/                   the weights as a HF folder (safetensors, config.json, vocab.txt)
```
`trainer_state.json` is what makes a resume exact: the loader restarts at `micro_batches`.
The `hf/` export is what `--init-from CHECKPOINT` and the MLflow registry use; it is written
at every save, so any checkpoint can start phase 2. DeepSpeed's files are read back through
`SafeCheckpointEngine` (weights_only), never unpickled as code. Never trains.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
DS_TAG = "deepspeed"  # one DeepSpeed tag per Ray checkpoint folder; the folder names the step
# what must not change between the save and the resume, or the data position means nothing
RESUME_KEYS = ("world_size", "micro_batch_size", "seed", "packing")


@dataclass
class TrainerState:
    """Everything besides DeepSpeed's tensors that a resumed run needs (trainer_state.json)."""
    world_size: int
    micro_batch_size: int
    seed: int
    packing: bool = False
    """Batches packed (the plan draws from whole shards instead of length bins)"""
    step: int = 0
    """Optimizer steps done"""
    micro_batches: int = 0
    """The data position: micro-batches consumed per rank (the loader restarts here)"""
    samples: int = 0
    """Samples seen per rank"""
    digests: list[str] = field(default_factory=list)
    """Per rank: a running hash of the sample ids trained on, in order"""
    metrics: dict = field(default_factory=dict)
    """The last logged train and eval metrics"""
    attempts: int = 0
    """Worker-group starts of this run (1 + restarts and resumes)"""

    def __post_init__(self):
        if not self.digests:
            self.digests = [""] * self.world_size

    def mismatch(self, now: TrainerState) -> str | None:
        """Why this checkpoint cannot continue with the settings of `now`, or None."""
        for key in RESUME_KEYS:
            if getattr(self, key) != getattr(now, key):
                return (f"it was checkpointed with {key}={getattr(self, key)} but resumes with "
                        f"{key}={getattr(now, key)}; keep the settings, or start a new "
                        "--run-name with --init-from CHECKPOINT")
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def latest_state(storage_path: str, run_name: str) -> TrainerState | None:
    """The trainer state of the run's newest checkpoint in storage (local or s3://), or None."""
    from pipeline.storage import exists, join, list_names, read_text
    run_dir = join(storage_path, run_name)
    for name in reversed([n for n in list_names(run_dir) if n.startswith("checkpoint-")]):
        path = join(run_dir, name, TRAINER_STATE)
        if exists(path):
            return TrainerState.from_json(read_text(path))
    return None


def export_state_dict(engine, zero_stage: int) -> dict | None:
    """Full fp32 weights on rank 0 (None elsewhere); ZeRO-3 gathers them from all ranks."""
    if zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
    else:
        sd = engine.module.state_dict()
    if sd is None:
        return None
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def save(engine, zero_stage: int, state: TrainerState, metrics: dict, rank: int,
         vocab: list[str], do_lower_case: bool) -> None:
    """Every rank: write its part into a local folder and report it to Ray Train."""
    import ray.train

    import model.hf
    folder = Path(tempfile.mkdtemp(prefix=f"bertpipe-ckpt-r{rank}-"))
    try:
        engine.save_checkpoint(str(folder), tag=DS_TAG)
        weights = export_state_dict(engine, zero_stage)
        if rank == 0:
            model.hf.save(engine.module, folder / "hf", vocab=vocab, do_lower_case=do_lower_case,
                          state_dict=weights)
            (folder / TRAINER_STATE).write_text(state.to_json())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=f"checkpoint-{state.step:08d}")
        if rank == 0:
            # the controller registers a report when it next polls the workers; a worker lost
            # before that would lose the checkpoint, so wait until it is committed
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load(engine, checkpoint, now: TrainerState) -> TrainerState:
    """Restore DeepSpeed's state from a Ray checkpoint; returns its trainer state."""
    with checkpoint.as_directory() as folder:
        saved = TrainerState.from_json((Path(folder) / TRAINER_STATE).read_text())
        problem = saved.mismatch(now)
        if problem:
            raise RuntimeError(f"cannot resume from {checkpoint.path}: {problem}")
        engine.load_checkpoint(folder, tag=DS_TAG)
    return saved
