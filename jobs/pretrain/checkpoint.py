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

A checkpoint is complete when Ray Train commits it: each rank uploads its part, and only
when every rank has reported does the controller add the folder to its index
(`checkpoint_manager_snapshot.json`) and prune the oldest beyond `num_to_keep` (never the
latest). A rank that dies or hits a full disk mid-upload leaves a folder outside the index
(torn): Ray resumes from the index's latest entry, `latest_state` reads the same index (so
the driver and the workers agree), and `remove_torn` deletes such folders before a rerun.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from jobs.train.paths import scratch_dir

TRAINER_STATE = "trainer_state.json"
DS_TAG = "deepspeed"  # one DeepSpeed tag per Ray checkpoint folder; the folder names the step
# Ray Train writes this index when every rank's part of a checkpoint is in storage; a rerun
# resumes from its latest entry (ray.train.get_checkpoint), so the driver reads it too
RAY_INDEX = "checkpoint_manager_snapshot.json"
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


def _ray_result(storage_path: str, run_name: str):
    """Ray Train's own record of the run's committed checkpoints (`ray.train.Result`), read
    from the index Ray resumes from; None before the first commit."""
    from jobs.config import ConfigError
    from pipeline.storage import exists, filesystem, join
    run_dir = join(storage_path, run_name)
    if not exists(join(run_dir, RAY_INDEX)):
        return None
    import ray.train
    fs, inner = filesystem(run_dir)
    try:
        return ray.train.Result.from_path(inner, storage_filesystem=fs)
    except Exception as e:  # pydantic / JSON / a committed folder gone: Ray could not resume
        line = next((x for x in str(e).splitlines() if x.strip()), type(e).__name__)
        raise ConfigError(f"run {run_name}: Ray's checkpoint index {join(run_dir, RAY_INDEX)} "
                          f"is unusable ({line[:200]}); move {run_dir} away or pick a new "
                          "--run-name (--init-from one of its checkpoints keeps the weights)") \
            from None


def committed(storage_path: str, run_name: str) -> list[str]:
    """Names of the run's checkpoint folders that Ray committed (every rank's part is in),
    oldest first; the last is the one a rerun resumes from."""
    result = _ray_result(storage_path, run_name)
    if result is None:
        return []
    paths = [c.path for c, _ in result.best_checkpoints]
    if result.checkpoint is not None and result.checkpoint.path not in paths:
        paths.append(result.checkpoint.path)
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in paths]


def latest_state(storage_path: str, run_name: str) -> TrainerState | None:
    """The trainer state of the checkpoint a rerun resumes from: Ray's latest committed one
    (local or s3://), never a newer folder some rank left half-written; None if none."""
    from pipeline.storage import join, read_text
    names = committed(storage_path, run_name)
    if not names:
        return None
    return TrainerState.from_json(read_text(join(storage_path, run_name, names[-1],
                                                 TRAINER_STATE)))


def remove_torn(storage_path: str, run_name: str) -> list[str]:
    """Delete checkpoint folders Ray never committed (a rank died or a disk filled while
    saving); returns their names. Only while no worker of the run is saving."""
    from pipeline.storage import delete, join, list_names
    keep = set(committed(storage_path, run_name))
    run_dir = join(storage_path, run_name)
    torn = [n for n in list_names(run_dir) if n.startswith("checkpoint-") and n not in keep]
    for name in torn:
        delete(join(run_dir, name))
    return torn


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
         vocab: list[str], do_lower_case: bool, upload=None) -> None:
    """Every rank: write its part into a local folder and report it to Ray Train, which
    uploads it (`upload`: a replacement upload function, for fault tests)."""
    import ray.train

    import model.hf
    folder = scratch_dir(f"ckpt-r{rank}-")  # removed below; by the next run if killed
    try:
        engine.save_checkpoint(str(folder), tag=DS_TAG)
        weights = export_state_dict(engine, zero_stage)
        if rank == 0:
            model.hf.save(engine.module, folder / "hf", vocab=vocab, do_lower_case=do_lower_case,
                          state_dict=weights)
            (folder / TRAINER_STATE).write_text(state.to_json())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=f"checkpoint-{state.step:08d}",
                         checkpoint_upload_fn=upload)
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
