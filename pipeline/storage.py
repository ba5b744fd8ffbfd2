"""Paths that may be local or remote (`s3://`, `gs://`, `https://`): list, open, write.

Text inputs go through smart-open (compression by extension); Parquet and every write go
through pyarrow filesystems. Writes are atomic where the storage allows: a local file is
written under a temporary name and renamed; an object store never shows a partial object.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.errors import InputError

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it). `AWS_ENDPOINT_URL` points S3 at another server."""
    path = str(path)
    if path.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        kwargs = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs = {"endpoint_override": host, "scheme": scheme}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), path[len("s3://"):]
    if is_remote(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    return pafs.LocalFileSystem(), str(Path(path).absolute())


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def transport_params(path: str) -> dict:
    """smart-open transport params (an S3 client honouring AWS_ENDPOINT_URL)."""
    if str(path).startswith("s3://"):
        import boto3
        return {"client": boto3.client("s3")}
    return {}


def open_binary(path: str):
    """Raw bytes of `path`, no decompression (callers decompress, so they can checksum).
    Local files are plain (seekable) files: importing smart-open costs ≈ 0.5 s."""
    if not is_remote(path):
        return open(os.path.expanduser(path), "rb")
    import smart_open
    return smart_open.open(path, "rb", compression="disable",
                           transport_params=transport_params(path))


def expand_inputs(patterns: list[str]) -> list[tuple[str, int]]:
    """Files named by paths, directories (recursive) and globs, as sorted (path, size)."""
    found: dict[str, int] = {}
    for pattern in patterns:
        pattern = str(pattern)
        fs, inner = filesystem(pattern)
        prefix = pattern[: len(pattern) - len(inner)] if is_remote(pattern) else ""
        has_glob = any(c in inner for c in "*?[")
        base = inner.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0] \
            if has_glob else inner
        try:
            info = fs.get_file_info(base)
        except OSError as e:
            raise InputError(f"input {pattern}: cannot read it ({str(e).splitlines()[0]})") from None
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"input {pattern}: no such file or directory")
        if info.type == pafs.FileType.File and not has_glob:
            _check_readable(pattern, inner, fs)
            found[prefix + inner] = info.size
            continue
        try:
            entries = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except OSError as e:
            raise InputError(f"input {pattern}: cannot list it ({str(e).splitlines()[0]})") from None
        matched = 0
        for e in entries:
            if e.type != pafs.FileType.File or Path(e.path).name.startswith((".", "_")):
                continue
            if has_glob and not fnmatch.fnmatch(e.path, inner):
                continue
            _check_readable(prefix + e.path, e.path, fs)
            found[prefix + e.path] = e.size
            matched += 1
        if matched == 0:
            raise InputError(f"input {pattern}: matches no files")
    return sorted(found.items())


def _check_readable(shown: str, inner: str, fs: pafs.FileSystem) -> None:
    if isinstance(fs, pafs.LocalFileSystem) and not os.access(inner, os.R_OK):
        raise InputError(f"input {shown}: permission denied")


def read_text(path: str) -> str:
    with open_binary(path) as f:
        return f.read().decode("utf-8")


def write_file_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` whole or not at all."""
    fs, inner = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(inner).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=Path(inner).parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, inner)
        except BaseException:  # a full disk, say: no temp file left behind, old file intact
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    else:  # object stores publish an object only once its upload completes
        with fs.open_output_stream(inner) as f:
            f.write(data)


def upload_atomic(local_file: str, path: str) -> None:
    """Move a finished local file to `path` (rename locally, upload to object stores)."""
    fs, inner = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(inner).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local_file, inner)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # another filesystem (a tmpfs /tmp, say): copy next to the target, then rename
            fd, tmp = tempfile.mkstemp(dir=Path(inner).parent, prefix=".tmp-")
            os.close(fd)
            try:
                shutil.copyfile(local_file, tmp)
                os.replace(tmp, inner)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            os.remove(local_file)
    else:
        pafs.copy_files(local_file, inner, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
        os.remove(local_file)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def list_names(path: str) -> list[str]:
    """Names directly inside directory `path` ([] if it does not exist)."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return []
    return sorted(Path(e.path).name for e in fs.get_file_info(pafs.FileSelector(inner)))


def delete(path: str) -> None:
    """Remove a file or a whole directory if present."""
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif info.type == pafs.FileType.File:
        fs.delete_file(inner)


def ensure_parent(path: str) -> None:
    """Create the parent directory of a local path (object stores need none)."""
    fs, inner = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(inner).parent.mkdir(parents=True, exist_ok=True)
