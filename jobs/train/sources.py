"""Where a job's starting weights come from, and which run they descend from.

`resolve_model` turns a model reference (pretraining's `--init-from`, fine-tuning's,
evaluation's and embedding's `--model`) into a local HF folder: an MLflow model
(`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/ID/PATH`) is downloaded; a pretraining
checkpoint in object storage has its `hf/` folder fetched; a local HF folder (ours, or any
BERT's) or checkpoint (its `hf/`) is used in place. It also finds the model's lineage: the
MLflow run that logged it and, for a registered model, its name and version. Fine-tune runs
carry that lineage as tags, linking them to their parent pretraining run.
Never trains and never reads task data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.train.paths import scratch_dir
from jobs.train.runtime import MLFLOW_MODEL_SCHEMES as MLFLOW_SCHEMES
from pipeline.errors import InputError
from pipeline.storage import filesystem, is_remote

PRETRAINED_URI_TAG = "bertpipe.pretrained_model"
PRETRAINED_RUN_TAG = "bertpipe.pretrained_run_id"
PRETRAINED_VERSION_TAG = "bertpipe.pretrained_model_version"


@dataclass
class ModelSource:
    uri: str
    """What --model said (an absolute path for folders)"""
    hf_dir: Path
    """The local HF folder"""
    run_id: str | None = None
    """The MLflow run that logged the model (the pretraining run of a registered model)"""
    registered: str | None = None
    """NAME/VERSION of a registered model version"""

    def tags(self) -> dict[str, str]:
        out = {PRETRAINED_URI_TAG: self.uri}
        if self.run_id:
            out[PRETRAINED_RUN_TAG] = self.run_id
        if self.registered:
            out[PRETRAINED_VERSION_TAG] = self.registered
        return out


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def lineage(uri: str, tracking_uri: str | None) -> tuple[str | None, str | None]:
    """(run id, NAME/VERSION) of an MLflow model URI; (None, None) for anything else. A logged
    model's own URI (`models:/m-ID`, what MLflow 3's log_model returns) has a run, no NAME."""
    if uri.startswith("runs:/"):
        return uri[len("runs:/"):].split("/", 1)[0], None
    if not uri.startswith("models:/"):
        return None, None
    from jobs.tracking import client
    ref = uri[len("models:/"):].rstrip("/")
    c = client(tracking_uri) if tracking_uri else client(_default_uri())
    if "/" not in ref and "@" not in ref:
        return c.get_logged_model(ref).source_run_id, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = c.get_model_version_by_alias(name, alias)
    else:
        name, _, number = ref.rpartition("/")
        version = c.get_model_version(name, number)
    return version.run_id, f"{name}/{version.version}"


def _default_uri() -> str:
    from jobs.tracking import default_tracking_uri
    return default_tracking_uri()


def resolve_model(src: str, tracking_uri: str | None, dest: Path | None = None,
                  flag: str = "--model", need_vocab: bool = True) -> ModelSource:
    """A local HF folder for `src`, with its lineage; one-line InputError when unusable."""
    src = str(src)
    if src.startswith(MLFLOW_SCHEMES):
        from jobs.tracking import download_model
        dest = dest or scratch_dir("model-")
        try:
            hf_dir = download_model(src, dest, tracking_uri)
            run_id, registered = lineage(src, tracking_uri)
        except Exception as e:  # MLflow raises many types: unknown name, alias, server down
            raise InputError(f"{flag} {src}: cannot get it from MLflow at "
                             f"{tracking_uri} ({_first_line(e)})") from None
        return ModelSource(src, hf_dir, run_id, registered)
    if is_remote(src):
        return ModelSource(src, _fetch_checkpoint(src, dest, flag))
    path = Path(src).expanduser()
    for candidate in (path, path / "hf"):
        if (candidate / "config.json").is_file():
            if need_vocab and not (candidate / "vocab.txt").is_file():
                raise InputError(f"{flag} {src}: no vocab.txt next to config.json (the vocab "
                                 "comes with the model)")
            return ModelSource(str(path.absolute()), candidate.absolute())
    raise InputError(f"{flag} {src}: expected a HF BERT folder (config.json, weights, "
                     "vocab.txt), a pretraining checkpoint (with hf/) or an MLflow model URI "
                     "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH)")


def _fetch_checkpoint(src: str, dest: Path | None, flag: str) -> Path:
    """Only the hf/ folder of a checkpoint in object storage, copied to a local folder."""
    import pyarrow.fs as pafs
    fs, inner = filesystem(src.rstrip("/") + "/hf")
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise InputError(f"{flag} {src}: no hf/ folder there (not a checkpoint of this job)")
    dest = dest or scratch_dir("model-")
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(inner, str(dest / "hf"), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return dest / "hf"


def local_model_dir(model_dir: str, model: str, tracking_uri: str | None) -> Path:
    """On a Ray worker: the driver's folder when this node sees it, else resolve again."""
    if (Path(model_dir) / "config.json").is_file():
        return Path(model_dir)
    return resolve_model(model, tracking_uri).hf_dir
