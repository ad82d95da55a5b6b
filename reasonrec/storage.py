"""Object storage: local paths, ``file://`` and ``s3://`` URIs behind one small API.

This is the only module that reads environment variables: the S3 endpoint and credentials come from the
standard AWS variables (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ...), so MinIO,
moto and AWS all work without code changes. Parquet goes through ``pyarrow.fs``.

A failure that survives the S3 client's retries is a ``StorageError``: one line naming the operation, the URI,
the endpoint and the cause. While an operation is still waiting on S3 (the client backs off for up to a minute),
the ``reasonrec.storage`` logger says so once.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import posixpath
import shutil
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


logger = logging.getLogger(__name__)


class StorageError(OSError):
    """An object-storage operation failed after the client's retries (not the data's fault: a rerun resumes)."""


def endpoint(uri: str) -> str:
    """Where ``uri`` lives, for messages: the S3 endpoint, or local disk."""
    if not is_remote(uri):
        return "local disk"
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f"endpoint {custom}" if custom else "AWS S3"


class _Waiting:
    """One line for an S3 operation that waits longer than ``after_s`` (and at most one every ``every_s``, however
    many operations wait at once)."""

    def __init__(self, after_s: float = 3.0, every_s: float = 15.0):
        self.after_s, self.every_s = after_s, every_s
        self._ops: dict[int, tuple[float, str, str]] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last = -float("inf")
        self._said: set[int] = set()  # operations already reported
        # Set by each new operation: the thread then re-reads ``after_s`` at once instead of finishing a sleep begun
        # under an older setting (a test's short limit was missed that way by a thread started with the default).
        self._wake = threading.Event()

    @contextlib.contextmanager
    def watch(self, verb: str, uri: str):
        if not is_remote(uri):  # local disk does not retry
            yield
            return
        key = next(self._keys)
        with self._lock:
            self._ops[key] = (time.monotonic(), verb, uri)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="reasonrec-storage-waiting", daemon=True)
                self._thread.start()
        self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._ops.pop(key, None)
                self._said.discard(key)

    def _run(self) -> None:
        while True:
            self._wake.wait(min(0.5, self.after_s))
            self._wake.clear()
            now, oldest = time.monotonic(), None
            with self._lock:
                late = [key for key, op in self._ops.items() if now - op[0] > self.after_s and key not in self._said]
                if late and now - self._last > self.every_s:
                    self._last = now
                    self._said.update(late)
                    oldest = min(self._ops[key] for key in late)
            if oldest:
                started, verb, uri = oldest
                logger.warning(f"storage: still waiting to {verb} {uri} ({endpoint(uri)}) after {now - started:.0f}s; "
                               f"the S3 client retries up to {_max_attempts()} attempts with backoff "
                               "(AWS_MAX_ATTEMPTS)")


_waiting = _Waiting()


def _operation(verb: str, uri_at: int = 0):
    """Wrap a storage function of ``uri``: a storage failure becomes a one-line ``StorageError``; a slow S3 call
    says once that it waits. A missing file stays ``FileNotFoundError`` (callers decide what absence means)."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            uri = args[uri_at]
            with _waiting.watch(verb, uri):
                try:
                    return fn(*args, **kwargs)
                except (FileNotFoundError, StorageError):
                    raise
                except OSError as e:
                    cause = " ".join(str(e).split()) or type(e).__name__
                    raise StorageError(f"storage: cannot {verb} {uri} ({endpoint(uri)}): {cause}") from e
        return inner
    return wrap


def _max_attempts() -> int:
    return int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS)


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
    connections are retried with exponential backoff, ``AWS_MAX_ATTEMPTS`` attempts in all. The region, too, is the
    SDK's: ``AWS_REGION`` when set (it overrides the rest, as in the AWS CLI), else ``AWS_DEFAULT_REGION``, the
    profile's ``region``, the instance's metadata, and only then us-east-1."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    attempts = _max_attempts()
    kwargs: dict = {"region": os.environ.get("AWS_REGION") or None,
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


@_operation("look up")
def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound



@_operation("read")
def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e


@_operation("write")
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


@_operation("read")
def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


@_operation("write", uri_at=1)
def write_parquet(table: pa.Table, uri: str) -> None:
    fs, path = resolve(uri)
    with _complete(fs, path) as target:
        pq.write_table(table, target, filesystem=fs)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@_operation("list")
def list_files(uri: str) -> list[str]:
    """All files below a prefix, as paths relative to it (sorted)."""
    path, infos = _entries(uri, recursive=True)
    return sorted(posixpath.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File)


@_operation("list")
def list_dirs(uri: str) -> list[str]:
    """The names of the folders (S3: common prefixes) directly below ``uri`` (sorted)."""
    _, infos = _entries(uri, recursive=False)
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos if i.type == pafs.FileType.Directory)


def _entries(uri: str, recursive: bool) -> tuple[str, list[pafs.FileInfo]]:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return path, []
    return path, fs.get_file_info(pafs.FileSelector(path, recursive=recursive))


@_operation("delete")
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


@_operation("move")
def move(uri: str, to: str) -> None:
    """Rename a file within one store (S3: copy then delete); the target's folder is created as needed."""
    fs, path = resolve(uri)
    target_fs, target = resolve(to)
    if type(fs) is not type(target_fs):
        raise ValueError(f"cannot move {uri} to {to}: not on the same storage")
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(target), recursive=True)
    fs.move(path, target)


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Copy every file of a local folder below ``uri``, each streamed; returns the relative paths copied."""
    local_dir = Path(local_dir)
    copied = []
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = file.relative_to(local_dir).as_posix()
        upload_file(file, join(uri, rel))
        copied.append(rel)
    return copied


@_operation("write", uri_at=1)
def upload_file(local: str | Path, uri: str) -> None:
    """One local file to ``uri`` in 8 MiB chunks (S3: a multipart upload), complete or not at all."""
    fs, path = resolve(uri)
    with open(local, "rb") as source, _complete(fs, path) as target, fs.open_output_stream(target) as f:
        shutil.copyfileobj(source, f, 8 * 2**20)


@_operation("download")
def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every file below ``uri`` into a local folder, streamed in chunks: a checkpoint of many gigabytes never
    sits in memory. A prefix with no file is ``FileNotFoundError``."""
    fs, path = resolve(uri)
    if not list_files(uri):
        raise FileNotFoundError(f"{uri}: no files there")
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, os.path.abspath(local_dir), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(), chunk_size=8 * 2**20)
    return Path(local_dir)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The checksum of a local file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@_operation("read")
def read_tail(uri: str, n: int) -> bytes:
    """The last ``n`` bytes of a file (all of it when shorter): one ranged read, e.g. a parquet footer."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            size = f.size()
            return f.read_at(min(n, size), size - min(n, size))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e
