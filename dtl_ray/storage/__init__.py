"""URIs to pyarrow filesystems, atomic writes and stage done-markers.

A URI is a local path or `s3://bucket/prefix`. S3 endpoint, region and credentials come from
the standard AWS variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

__all__ = ["resolve", "join", "exists", "read_bytes", "write_bytes", "read_json", "write_json",
           "local_path", "list_files", "StorageError", "check_access",
           "configure_s3", "train_storage", "delete"]

S3_MAX_ATTEMPTS = 10


class StorageError(OSError):
    """A URI that cannot be used: missing bucket, refused credentials, unreachable endpoint."""


def configure_s3(endpoint_url: str | None, region: str | None) -> dict[str, str]:
    """Sets the S3 endpoint and region for this process (and the Ray workers it starts).

    Returns the environment variables set, for a Ray runtime_env. Credentials are never
    handled here: they come from the standard AWS chain (variables, profiles, roles).
    """
    env = {}
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    if region:
        env["AWS_REGION"] = region
    os.environ.update(env)
    return env


def _reason(e: Exception) -> str:
    text = str(e).replace("\n", " ")
    for marker in ("AWS Error ", "Detail: "):
        if marker in text:
            text = text[text.index(marker):]
    return text[:240]


def _local_reason(e: OSError) -> str:
    import errno

    named = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
             errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
    return named.get(e.errno, f"{type(e).__name__}: {e}"[:240])


MIN_FREE_BYTES = 1 << 20


def _local_unwritable(path: str) -> str | None:
    """Why nothing can be written at a local `path` (judged on it, or on its nearest existing
    parent when it does not exist yet; nothing is written), or None."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        return f"{p} is a file, not a folder"
    st = os.statvfs(p)
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if not os.access(p, os.W_OK | os.X_OK):
        return "permission denied"
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        return "no space left on the device"
    return None


def check_access(uri: str, write: bool = False) -> None:
    """Fails early, with one clear line, when `uri` cannot be read (or written).

    Raises:
        StorageError: unreachable endpoint, refused credentials, missing bucket.
    """
    if not uri.startswith("s3://"):
        if write:  # a read-only folder, no permission, a full disk: told now, in one line
            reason = _local_unwritable(path_of(uri))
            if reason:
                raise StorageError(f"cannot write {uri}: {reason}")
        return
    # a wrong endpoint or bucket is told in seconds: a few attempts, a short connect timeout
    # (the run's own reads and writes keep S3_MAX_ATTEMPTS for transient errors)
    fs, path = _s3_filesystem(attempts=3, connect_timeout=3.0), path_of(uri)
    bucket = path.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"bucket '{bucket}' of {uri} does not exist (or is not visible "
                               "with these credentials)")
        fs.get_file_info(path)
        if write:
            probe = join(uri, f".dtl-ray-probe-{uuid.uuid4().hex[:8]}")
            write_bytes(probe, b"ok")
            delete(probe)
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(f"cannot {'write' if write else 'read'} {uri}: {_reason(e)}") from None


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    fs.delete_file(path)


def delete_tree(uri: str) -> None:
    """Deletes a folder (a prefix on S3) and everything under it; a missing one is fine."""
    fs, path = resolve(uri)
    if retry(fs.get_file_info, path).type == pafs.FileType.Directory:
        retry(fs.delete_dir, path)
    elif isinstance(fs, pafs.S3FileSystem):  # S3 has no folders: delete the prefix's objects
        retry(lambda: fs.delete_dir_contents(path, missing_dir_ok=True))


def train_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for a Ray Train/Tune RunConfig."""
    local = local_path(uri)
    if local is not None:
        return local, None
    fs, path = resolve(uri)
    return path, fs


# errors worth another try: throttling (429, SlowDown), server and gateway errors (500, 502,
# 503, 504), dropped connections and timeouts
TRANSIENT = ("HTTP status 500", "HTTP status 502", "HTTP status 503", "HTTP status 504",
             "HTTP status 429", "SLOW_DOWN", "SlowDown", "THROTTLING", "TooManyRequests",
             "NETWORK_CONNECTION", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "REQUEST_TIMEOUT",
             "Connection reset", "timed out")


class ShortWrite(OSError):
    """An object that does not hold what was just written to it (tried again)."""


def is_transient(e: BaseException) -> bool:
    """Whether a storage error is worth another try (see TRANSIENT)."""
    return isinstance(e, ShortWrite) or (isinstance(e, OSError)
                                         and any(t in str(e) for t in TRANSIENT))


def retry(fn, *args, attempts: int = 6, base_s: float = 0.2):
    """Calls fn(*args), retrying transient storage errors (503s, dropped connections) with
    exponential backoff; other errors, and the last transient one, are raised."""
    for i in range(attempts):
        try:
            return fn(*args)
        except OSError as e:
            if i == attempts - 1 or not is_transient(e):
                raise
            time.sleep(base_s * 2 ** i)
    raise AssertionError("unreachable")


def _s3_filesystem(attempts: int | None = None,
                   connect_timeout: float | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3 client for the endpoint and region in the environment; `attempts`
    defaults to `DTL_RAY_S3_ATTEMPTS` or S3_MAX_ATTEMPTS (each read and write is retried
    again around it by `retry`)."""
    if attempts is None:
        attempts = int(os.environ.get("DTL_RAY_S3_ATTEMPTS", S3_MAX_ATTEMPTS))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kwargs["scheme"] = "http"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    # transient errors (503 SlowDown, dropped connections) are retried with backoff;
    # delayed open: a small file is one PutObject, not a multipart upload (three requests)
    if connect_timeout is not None:
        kwargs["connect_timeout"] = connect_timeout
    return pafs.S3FileSystem(retry_strategy=pafs.AwsStandardS3RetryStrategy(attempts),
                             allow_delayed_open=True, **kwargs)


def path_of(uri: str) -> str:
    """The path of `uri` within its filesystem (no filesystem is built: cheap per file)."""
    if uri.startswith("s3://"):
        return uri[len("s3://"):].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Returns (filesystem, path within it) for a local path or an s3:// URI."""
    path = path_of(uri)
    return (_s3_filesystem() if uri.startswith("s3://") else pafs.LocalFileSystem()), path


def local_path(uri: str) -> str | None:
    """The absolute local path of `uri`, or None when it is remote."""
    if uri.startswith("s3://"):
        return None
    return resolve(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Joins URI parts with '/'."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_utf8(name: str) -> bool:
    """Whether a listed name is valid UTF-8 (S3 keys always are; local names may not be)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(name: str) -> str:
    """A listed name that is not UTF-8, with its bad bytes as \\x escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return retry(fs.get_file_info, path).type != pafs.FileType.NotFound


def read_file(fs: pafs.FileSystem, path: str) -> bytes:
    """The bytes of one file, transient errors retried."""
    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return retry(read)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    return read_file(fs, path)


def write_bytes(uri: str, data: bytes) -> None:
    """Writes atomically: a reader sees the old file or the whole new one, never a part."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        folder = path.rsplit("/", 1)[0]
        tmp = f"{path}{TEMP}{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
            _fsync_dir(folder)  # and so is the name (a marker survives a power cut)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)  # a full disk leaves no partial file behind
            raise StorageError(f"cannot write {uri}: {_local_reason(e)}") from None
    else:  # an S3 PUT is atomic per object; S3 has no folders to create
        def put() -> None:
            with fs.open_output_stream(path) as f:
                f.write(data)
            # read back what S3 now holds: a PUT that a proxy or a retry garbled is caught
            # here, not when a later stage reads the file
            size = fs.get_file_info(path).size
            if size != len(data):
                raise ShortWrite(f"{uri} holds {size} bytes after writing {len(data)}")

        retry(put)


TEMP = ".tmp-"
"""What `write_bytes` puts between a local file's name and its random suffix while writing."""


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temp_files(uri: str) -> int:
    """Deletes what `write_bytes` left behind below a local folder when its process was
    killed mid-write (`name.tmp-xxxxxxxx`); returns how many. Nothing to do on S3."""
    import re

    if uri.startswith("s3://"):
        return 0
    root, n = path_of(uri), 0
    pattern = re.compile(re.escape(TEMP) + r"[0-9a-f]{8}$")
    for d, _, names in os.walk(root):
        for name in names:
            if pattern.search(name):
                os.remove(os.path.join(d, name))
                n += 1
    return n


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=False, default=float).encode())


def list_files(uri: str) -> list[tuple[str, int]]:
    """All files below `uri` as (path relative to uri, size), sorted; [] if it is missing.

    A local name that is not UTF-8 comes back as Python decodes it (with surrogate escapes:
    see `is_utf8`): pyarrow's listing fails on the whole folder for one such name."""
    if not uri.startswith("s3://"):
        root = path_of(uri)
        if not os.path.isdir(root):
            return []
        out = []
        for d, _, names in os.walk(root, followlinks=True):
            for n in names:
                p = os.path.join(d, n)
                try:
                    size = os.path.getsize(p)
                except OSError:  # a broken link: listed, and rejected when it is read
                    size = 0
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), size))
        return sorted(out)
    fs, root = resolve(uri)
    if retry(fs.get_file_info, root).type != pafs.FileType.Directory:
        return []
    infos = retry(fs.get_file_info, pafs.FileSelector(root, recursive=True))
    out = [(i.path[len(root):].lstrip("/"), i.size) for i in infos if i.type == pafs.FileType.File]
    return sorted(out)
