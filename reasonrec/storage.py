"""Object storage: local paths, ``file://`` and ``s3://`` URIs behind one small API.

This is the only module that reads environment variables: the S3 endpoint and credentials come from the
standard AWS variables (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...), so MinIO,
moto and AWS all work without code changes. Parquet goes through ``pyarrow.fs``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts)


def absolute(uri: str) -> str:
    """The same location, independent of the working directory (Ray workers run elsewhere)."""
    scheme = urlparse(uri).scheme
    return uri if scheme and len(scheme) > 1 else os.path.abspath(uri)


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme == "s3"


DEFAULT_MAX_ATTEMPTS = 8


def _s3_filesystem() -> pafs.S3FileSystem:
    """Credentials are left to the AWS SDK's own chain (variables, config/credentials files, instance roles): they
    never pass through this code, so they cannot reach a log or a manifest. Throttling, 5xx answers and dropped
    connections are retried with exponential backoff, ``AWS_MAX_ATTEMPTS`` attempts in all."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS)
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
                    "connect_timeout": 10, "request_timeout": 60}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and the path inside it for a URI or local path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return _s3_filesystem(), (parsed.netloc + parsed.path).rstrip("/")
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(parsed.path)
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # "" or a Windows drive letter
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    raise ValueError(f"unsupported storage URI scheme {parsed.scheme!r} in {uri!r} (use a path, file:// or s3://)")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound



def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    with _complete(fs, path) as target, fs.open_output_stream(target) as f:
        f.write(data)


@contextlib.contextmanager
def _complete(fs: pafs.FileSystem, path: str):
    """Where to write so that ``path`` appears only complete: an S3 PUT is atomic; a local file is written
    beside it and renamed (a crash mid-write leaves no half file under the real name)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    fs.create_dir(posixpath.dirname(path), recursive=True)
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield partial
        fs.move(partial, path)
    finally:
        if fs.get_file_info(partial).type != pafs.FileType.NotFound:
            fs.delete_file(partial)


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def write_parquet(table: pa.Table, uri: str) -> None:
    fs, path = resolve(uri)
    with _complete(fs, path) as target:
        pq.write_table(table, target, filesystem=fs)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def list_files(uri: str) -> list[str]:
    """All files below a prefix, as paths relative to it (sorted)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(posixpath.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File)


def delete(uri: str) -> None:
    """Delete a file or a whole prefix; missing is fine."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif is_remote(uri):  # S3 "directories" may exist only as key prefixes
        for rel in list_files(uri):
            fs.delete_file(posixpath.join(path, rel))


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Copy every file of a local folder below ``uri``; returns the relative paths copied."""
    local_dir = Path(local_dir)
    copied = []
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = file.relative_to(local_dir).as_posix()
        write_bytes(join(uri, rel), file.read_bytes())
        copied.append(rel)
    return copied


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_tail(uri: str, n: int) -> bytes:
    """The last ``n`` bytes of a file (all of it when shorter): one ranged read, e.g. a parquet footer."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            size = f.size()
            return f.read_at(min(n, size), size - min(n, size))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e
